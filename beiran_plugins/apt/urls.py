"""From what apt sent to an upstream URL this proxy may fetch, and what kind of apt file it names.

Two request forms: proxy mode (`GET http://host/path`, absolute URI) and mirror mode
(`GET /https/host/path` or `/http/host/path`, for sources apt cannot send through a caching proxy).
Paths are decoded once, `.` segments dropped, `..` refused: an upstream URL is only ever built from
a `Target` that passed here.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property, lru_cache
from urllib.parse import quote, unquote, urlsplit

from beiran.errors import BadRequest, Forbidden, NotFound

_HOST = re.compile(r"^(?=.{1,253}$)[a-z0-9_]([a-z0-9_-]{0,62})(\.[a-z0-9_]([a-z0-9_-]{0,62}))*\.?$")
_SEGMENT_BAD = re.compile(r"[\x00-\x1f\x7f\\]")
_HASH_LEN = {"SHA256": 64, "SHA512": 128}
_COMP = r"(\.(gz|xz|bz2|lzma|zst|lz4))?"
_INDEX_NAME = re.compile(rf"^(Packages|Sources|Release|Index|Translation-[\w@.+-]+|Contents-[\w.+-]+){_COMP}$")
_PACKAGE = re.compile(r"\.(deb|udeb|ddeb)$")
_SOURCE_FILE = re.compile(r"\.(dsc|diff\.gz|tar(\.(gz|xz|bz2|lzma|zst))?|buildinfo)$")
MIRROR_USAGE = "use http://PROXY/https/HOST/PATH (or /http/HOST/PATH) as the archive URL"


class Kind(StrEnum):
    RELEASE = "release"  # InRelease, Release, Release.gpg
    INDEX = "index"  # Packages*, Sources*, Translation-*, Contents-*, anything else under dists/
    BY_HASH = "by-hash"  # dists/.../by-hash/SHA256/<hex>: content-addressed index
    PACKAGE = "package"  # .deb / .udeb / .ddeb
    SOURCE = "source"  # .dsc, .tar.*, .diff.gz: passed through


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str  # lowercase; IPv6 without brackets
    port: int | None
    path: str  # "/a/b/c": decoded, normalised
    mode: str  # proxy | mirror

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}" if self.port else host

    @cached_property
    def url(self) -> str:
        """The upstream URL (also the key the cache and the index use); made once per target
        (it was made several times per .deb request)."""
        return f"{self.scheme}://{self.netloc}{quote(self.path, safe='/~+@:,=')}"

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @cached_property
    def kind(self) -> Kind:
        """Classified once per target (parsed targets are kept: `_parse_request`)."""
        return classify(self.path)


def classify(path: str) -> Kind:
    """The kind of apt file `path` names; Forbidden for anything that is not part of an archive."""
    segs = path.strip("/").split("/")
    name = segs[-1]
    if "by-hash" in segs[:-1]:
        i = segs.index("by-hash")
        if i == len(segs) - 3 and segs[i + 1] in _HASH_LEN and re.fullmatch(
                f"[0-9a-f]{{{_HASH_LEN[segs[i + 1]]}}}", name):
            return Kind.BY_HASH
        raise Forbidden(f"{path[:200]}: not a by-hash index name (by-hash/SHA256/<hex> or SHA512)")
    if name in ("InRelease", "Release", "Release.gpg"):
        return Kind.RELEASE
    if _PACKAGE.search(name):
        return Kind.PACKAGE
    if "dists" in segs[:-1] or _INDEX_NAME.match(name):
        return Kind.INDEX
    if _SOURCE_FILE.search(name):
        return Kind.SOURCE
    raise Forbidden(f"{path[:200]} is not an apt archive file (Release, index or package); "
                    "this proxy serves apt repositories only")


def clean_path(raw: str) -> str:
    """Decode once, drop `.` and empty segments, refuse `..`, control characters and backslashes."""
    if "?" in raw or "#" in raw:
        raise BadRequest("query strings and fragments are not part of apt requests")
    path = unquote(raw, errors="strict")
    segs = []
    for seg in path.split("/"):
        if seg in ("", "."):
            continue
        if seg == ".." or _SEGMENT_BAD.search(seg):
            raise BadRequest(f"path {raw[:200]!r} contains '..' or control characters")
        segs.append(seg)
    if not segs:
        raise NotFound("no file named in the request")
    return "/" + "/".join(segs)


def clean_host(host: str, allow: list[str]) -> str:
    host = host.lower()
    if host.startswith("[") and host.endswith("]"):
        try:
            host = str(ipaddress.IPv6Address(host[1:-1]))
        except ValueError:
            raise BadRequest(f"bad IPv6 host {host[:80]!r}") from None
    elif not _HOST.match(host):
        raise BadRequest(f"bad host name {host[:80]!r}")
    if allow and not any(fnmatch.fnmatchcase(host, p.lower()) for p in allow):
        raise Forbidden(f"upstream host {host} is not in [plugins.apt] allow_hosts")
    return host.rstrip(".")


def parse_request(uri: str, allow_hosts: list[str] | None = None) -> Target:
    """`http://host[:port]/path` (proxy mode) or `/https/host[:port]/path` (mirror mode). A .deb's
    URI is parsed for its prefetch and again for its request: the answer is kept."""
    return _parse_request(uri, tuple(allow_hosts or ()))


@lru_cache(maxsize=1024)  # keys up to 4 KiB each: 4 MiB at most
def _parse_request(uri: str, allow: tuple[str, ...]) -> Target:
    if len(uri) > 4096:
        raise BadRequest("request URI too long")
    if uri.startswith("/"):
        scheme, _, rest = uri[1:].partition("/")
        if scheme not in ("http", "https"):
            raise NotFound(f"{uri[:120]} is not a proxied URL: send absolute http:// URIs (Acquire::http::Proxy) "
                           f"or {MIRROR_USAGE}")
        hostport, _, path = rest.partition("/")
        mode = "mirror"
    elif uri.lower().startswith(("http://", "https://")):
        parts = urlsplit(uri)
        if parts.username or parts.password:
            raise BadRequest("credentials in proxied URLs are not supported")
        scheme, hostport, path = parts.scheme.lower(), parts.netloc, parts.path
        if parts.query or parts.fragment:
            raise BadRequest("query strings and fragments are not part of apt requests")
        mode = "proxy"
    else:
        raise BadRequest(f"malformed proxy request {uri[:120]!r}: expected an absolute http:// URI or "
                         f"a mirror path ({MIRROR_USAGE})")
    if not hostport:
        raise BadRequest(f"no host in {uri[:120]!r} ({MIRROR_USAGE})")
    m = re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[^:\[\]]+)(?::(\d{1,5}))?", hostport)
    if not m:
        raise BadRequest(f"bad host:port {hostport[:80]!r}")
    port = int(m.group(2)) if m.group(2) else None
    if port is not None and not 0 < port < 65536:
        raise BadRequest(f"bad port in {hostport[:80]!r}")
    if (scheme, port) in (("http", 80), ("https", 443)):
        port = None
    host = clean_host(m.group(1), list(allow))
    return Target(scheme, host, port, clean_path(path), mode)


def parse_url(url: str) -> Target:
    """An upstream URL this node built itself (a stored base + a validated path)."""
    return parse_request(url)


def safe_relpath(path: object) -> str:
    """A path relative to an archive base, as peers send it in a fetch source."""
    if not isinstance(path, str) or not path or len(path) > 1024 or path.startswith("/"):
        raise BadRequest("apt source path must be a relative path")
    try:
        clean = clean_path(path).lstrip("/")
        kind = classify("/" + clean)
    except (NotFound, Forbidden) as exc:
        raise BadRequest(f"apt source path: {exc.message}") from None
    if clean != path:
        raise BadRequest(f"apt source path {path[:120]!r} is not normalised")
    if kind not in (Kind.PACKAGE, Kind.BY_HASH, Kind.SOURCE):
        raise BadRequest(f"apt source path {path[:120]!r} is not a content-addressed file")
    return clean
