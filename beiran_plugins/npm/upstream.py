"""The configured upstream registry: packuments with conditional requests, credentials sent only to
the upstream's own host, and the pass-through of requests Beiran does not handle (publish, login...)."""

from __future__ import annotations

import asyncio
import base64
import gzip
import ssl
import zlib
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from beiran.errors import ConfigError, NotFound, UpstreamError
from beiran.httpstream import stream_request
from beiran_plugins.npm.metadata import ABBREVIATED

#: request headers of the npm client passed on when a request is forwarded
FORWARD_HEADERS = ("accept", "authorization", "content-type", "npm-otp", "npm-command", "npm-auth-type",
                   "npm-scope", "npm-session", "npm-in-ci", "referer", "user-agent")
#: response headers passed back to the npm client
RETURN_HEADERS = ("content-type", "www-authenticate", "npm-notice", "location", "etag")


#: exactly what npm sends for abbreviated metadata (some registries compare the whole header)
NPM_ABBREVIATED_ACCEPT = f"{ABBREVIATED}; q=1.0, application/json; q=0.8, */*"


class UpstreamTimeout(UpstreamError):
    status, code = 504, "upstream_timeout"


class PackageNotFound(NotFound):
    code = "package_not_found"


@dataclass
class Fetched:
    status: int  # 200 or 304
    body: bytes | None = None
    etag: str | None = None
    last_modified: str | None = None
    content_type: str = ""


class Upstream:
    def __init__(self, url: str, *, token: str | None = None, username: str | None = None,
                 password: str | None = None, ca_file: str | None = None, timeout: float = 30.0,
                 max_packument_size: int = 256 << 20) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"[plugins.npm] upstream must be an http(s) URL, not {url!r}")
        self.url = url.rstrip("/")
        self.origin = (parts.scheme, parts.netloc)
        self.netloc = parts.netloc
        self.timeout = float(timeout)
        self.max_packument_size = max_packument_size
        self.auth: dict[str, str] = {}
        if token:
            self.auth = {"Authorization": f"Bearer {token}"}
        elif username and password:
            raw = base64.b64encode(f"{username}:{password}".encode()).decode()
            self.auth = {"Authorization": f"Basic {raw}"}
        try:
            self.ssl_ctx = ssl.create_default_context(cafile=ca_file) if ca_file else None
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"[plugins.npm] ca_file {ca_file!r}: {exc}") from None

    def packument_url(self, name: str) -> str:
        return f"{self.url}/{quote(name, safe='@')}"

    def tarball_url(self, name: str, file: str) -> str:
        return f"{self.url}/{name}/-/{quote(file)}"

    def is_upstream(self, url: str) -> bool:
        parts = urlsplit(url)
        return (parts.scheme, parts.netloc) == self.origin

    def headers_for(self, url: str) -> dict[str, str]:
        """Credentials go to the upstream's own host only."""
        return dict(self.auth) if self.is_upstream(url) else {}

    async def packument(self, name: str, kind: str, etag: str | None = None,
                        last_modified: str | None = None) -> Fetched:
        headers = {"Accept": NPM_ABBREVIATED_ACCEPT if kind == "abbr" else "application/json",
                   "Accept-Encoding": "gzip", **self.auth}
        if etag:
            headers["If-None-Match"] = etag
        if last_modified:
            headers["If-Modified-Since"] = last_modified
        try:
            async with asyncio.timeout(self.timeout):  # no task of its own, unlike wait_for
                return await self._get_packument(name, headers)
        except TimeoutError:
            raise UpstreamTimeout(f"upstream {self.netloc} did not answer for {name} in {self.timeout:g}s") from None

    async def _get_packument(self, name: str, headers: dict[str, str]) -> Fetched:
        url = self.packument_url(name)
        async with stream_request(url, headers, ssl_ctx=self.ssl_ctx, origin=True,
                                  connect_timeout=min(self.timeout, 10.0)) as resp:
            if resp.code == 304:
                return Fetched(304, None, resp.headers.get("ETag"), resp.headers.get("Last-Modified"))
            if resp.code == 404:
                raise PackageNotFound(f"package {name} is not in the registry {self.url}")
            if resp.code in (401, 403):
                raise UpstreamError(f"upstream {self.netloc} refused {name} ({resp.code}): "
                                    "check [plugins.npm] token / username / password")
            if resp.code != 200:
                raise UpstreamError(f"upstream {self.netloc} answered {resp.code} {resp.reason} for {name}")
            body = await resp.read_all(self.max_packument_size, idle_timeout=self.timeout)
            encoding = (resp.headers.get("Content-Encoding") or "").lower()
            if encoding in ("gzip", "deflate"):
                body = _decompress(body, encoding, self.max_packument_size, name)
            return Fetched(200, body, resp.headers.get("ETag"), resp.headers.get("Last-Modified"),
                           (resp.headers.get("Content-Type") or "").split(";")[0].strip().lower())

    async def forward(self, method: str, path: str, headers: dict[str, str],
                      body: bytes | None) -> tuple[int, dict[str, str], bytes]:
        """Send a client's request on unchanged (publish, login, audit...), return the answer."""
        url = f"{self.url}/{path.lstrip('/')}"
        hdrs = {k: v for k, v in headers.items() if k.lower() in FORWARD_HEADERS}

        async def go() -> tuple[int, dict[str, str], bytes]:
            async with stream_request(url, hdrs, method=method, ssl_ctx=self.ssl_ctx, body=body, origin=True,
                                      connect_timeout=min(self.timeout, 10.0)) as resp:
                data = await resp.read_all(64 << 20, idle_timeout=self.timeout)
                out = {k: v for k, v in resp.headers.get_all() if k.lower() in RETURN_HEADERS}
                return resp.code, out, data
        try:
            return await asyncio.wait_for(go(), self.timeout * 4)
        except TimeoutError:
            raise UpstreamTimeout(f"upstream {self.netloc} did not answer {method} /{path[:80]} in time") from None


def _decompress(body: bytes, encoding: str, limit: int, name: str) -> bytes:
    try:
        if encoding == "gzip":
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        else:
            d = zlib.decompressobj()
        out = d.decompress(body, limit + 1)
    except (zlib.error, gzip.BadGzipFile) as exc:
        raise UpstreamError(f"upstream sent a packument for {name} that does not decompress: {exc}") from None
    if len(out) > limit:
        raise UpstreamError(f"packument of {name} is larger than {limit} bytes")
    return out


def packument_headers_kind(accept: str | None) -> str:
    """'abbr' when the client asks for the install-v1 form first, else 'full'."""
    if not accept:
        return "full"
    first = accept.split(",")[0].split(";")[0].strip().lower()
    return "abbr" if first == ABBREVIATED else "full"
