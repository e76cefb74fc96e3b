"""Talking to upstream registries: endpoints from config, the Bearer token flow and Basic auth,
manifest HEAD/GET with a size limit, and blob streams for the core fetcher."""

from __future__ import annotations

import base64
import json
import logging
import re
import ssl
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from beiran.errors import BeiranError, ConfigError, ResponseTooLarge, UpstreamError
from beiran.fetch.origins import stream_from_response
from beiran.httpstream import StreamResponse, stream_request
from beiran.plugin import OriginStream
from beiran_plugins.docker.errors import (
    BlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameUnknown,
    RegistryUnavailable,
    TooManyRequests,
    UpstreamDenied,
    UpstreamUnauthorized,
)
from beiran_plugins.docker.manifest import MAX_MANIFEST
from beiran_plugins.docker.reference import DOCKER_HUB, DOCKER_HUB_ENDPOINT, validate_registry

log = logging.getLogger("beiran.docker")
_PREFIX = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_PARAM = re.compile(r'(\w+)\s*=\s*(?:"([^"]*)"|([^\s,]+))')


@dataclass
class Endpoint:
    name: str
    url: str
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    ssl_ctx: ssl.SSLContext | None = None  # from ca_file; None: the system's CAs
    #: OAuth2 refresh token, exchanged at the token service (docker config's "identitytoken")
    identity_token: str | None = None
    #: a bearer token sent to the registry as it is (docker config's "registrytoken")
    registry_token: str | None = None
    #: hosts besides the registry's own whose https token realm may receive the credentials
    token_realms: tuple[str, ...] = ()
    #: `/v2/<prefix>/<repository>/...` on the mirror means this registry (registries.conf clients
    #: such as podman, skopeo, CRI-O cannot say which registry they mean otherwise)
    prefix: str | None = None

    @property
    def credentialed(self) -> bool:
        return bool(self.username or self.identity_token or self.registry_token)

    def realm_allowed(self, realm: str) -> bool:
        """May the credentials go to this token realm? Only over https to the registry's own host
        or a host the config allows (`token_realms`); a plain-http registry configured as such may
        also use a realm on exactly its own origin (the credentials go there anyway)."""
        r, own = urlsplit(realm), urlsplit(self.url)
        if r.scheme == "https":
            return (r.hostname or "") in {own.hostname or "", *self.token_realms}
        return r.scheme == own.scheme == "http" and (r.hostname, r.port) == (own.hostname, own.port)

    def __post_init__(self) -> None:
        """Loads ca_file now (OSError, ssl.SSLError): a bad one is a config error, not a 500 per request."""
        if self.ca_file and self.ssl_ctx is None:
            self.ssl_ctx = ssl.create_default_context(cafile=self.ca_file)


@dataclass
class ManifestHead:
    digest: str | None
    media_type: str
    size: int | None


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="...",service="..."` -> ("bearer", {...})."""
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), {m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
                            for m in _PARAM.finditer(rest)}


def _image(repository: str, reference: str) -> str:
    """How an image is named: `name:tag`, or `name@sha256:...` for a digest."""
    return f"{repository}@{reference}" if ":" in reference else f"{repository}:{reference}"


class Upstream:
    def __init__(self, config: dict[str, Any]) -> None:
        self.timeout = float(config.get("upstream_timeout", 10.0))
        self.allow_unconfigured = bool(config.get("allow_unconfigured", True))
        self.endpoints: dict[str, Endpoint] = {}
        #: mirror path prefix -> registry name
        self.prefixes: dict[str, str] = {}
        registries = config.get("registries") or {}
        if not isinstance(registries, dict):
            raise ConfigError("[plugins.docker.registries] must be a table of registries")
        for name, section in registries.items():
            if not isinstance(section, dict):
                raise ConfigError(f"[plugins.docker.registries.{name!r}] must be a table")
            try:
                canon = validate_registry(name)
            except BeiranError as exc:
                raise ConfigError(f"[plugins.docker.registries]: {exc.message}") from None
            url = str(section.get("url") or (DOCKER_HUB_ENDPOINT if canon == DOCKER_HUB else f"https://{canon}"))
            if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
                raise ConfigError(f"registry {name}: url must be http(s)://host[:port], not {url!r}")
            ca_file = section.get("ca_file")
            tokens = {k: section.get(k) or None for k in ("identity_token", "registry_token")}
            if any(v is not None and not isinstance(v, str) for v in tokens.values()):
                raise ConfigError(f"registry {name}: identity_token and registry_token are strings")
            realms = section.get("token_realms") or (["auth.docker.io"] if canon == DOCKER_HUB else [])
            if not isinstance(realms, list) or not all(isinstance(h, str) for h in realms):
                raise ConfigError(f"registry {name}: token_realms is a list of host names")
            prefix = section.get("prefix")
            if prefix is not None:
                if not isinstance(prefix, str) or not _PREFIX.match(prefix):
                    raise ConfigError(f"registry {name}: prefix must be one path segment of lowercase letters, "
                                      f"digits, '.', '_' or '-', not {prefix!r}")
                if prefix in self.prefixes:
                    raise ConfigError(f"registry {name}: prefix {prefix!r} is already {self.prefixes[prefix]}'s")
                self.prefixes[prefix] = canon
            try:
                self.endpoints[canon] = Endpoint(canon, url.rstrip("/"), section.get("username"),
                                                 section.get("password"), ca_file, **tokens, prefix=prefix,
                                                 token_realms=tuple(realms))
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"registry {name}: cannot load ca_file {ca_file!r}: {exc}") from None
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}

    def configured(self, registry: str, default_registry: str) -> bool:
        """Does this node's config name `registry` (a registries section, or the default)?"""
        return registry in self.endpoints or registry == default_registry

    def anonymous(self, registry: str) -> Upstream:
        """A client for `registry` at its configured endpoint with no credentials (for peers)."""
        ep = self.endpoint(registry)
        clone = Upstream({"upstream_timeout": self.timeout, "allow_unconfigured": False})
        clone.endpoints[registry] = Endpoint(registry, ep.url, ca_file=ep.ca_file, ssl_ctx=ep.ssl_ctx)
        return clone

    def endpoint(self, registry: str) -> Endpoint:
        if registry in self.endpoints:
            return self.endpoints[registry]
        if registry == DOCKER_HUB:
            return self.endpoints.setdefault(registry, Endpoint(registry, DOCKER_HUB_ENDPOINT))
        if not self.allow_unconfigured:
            raise NameUnknown(f"registry {registry} is not configured on this node")
        return self.endpoints.setdefault(registry, Endpoint(registry, f"https://{registry}"))

    # -- auth ------------------------------------------------------------------------------------
    async def _authenticate(self, ep: Endpoint, repository: str, challenge: str,
                            sent: str | None = None) -> None:
        """Answer a 401 challenge. `sent` is the Authorization this request carried: only a 401 to
        our own Basic credentials means they are wrong (a concurrent first request did not send any)."""
        scheme, params = parse_challenge(challenge)
        key = (ep.name, repository)
        if scheme == "basic":
            if ep.identity_token and not ep.username:
                raise UpstreamUnauthorized(f"registry {ep.name} asks for Basic auth; no identity token answers that")
            if not ep.username:
                raise UpstreamUnauthorized(f"registry {ep.name} requires credentials (set username and password)")
            if sent and sent.startswith("Basic "):
                raise UpstreamUnauthorized(f"registry {ep.name} refused the configured credentials")
            raw = f"{ep.username}:{ep.password or ''}".encode()
            self._tokens[key] = ("Basic " + base64.b64encode(raw).decode(), float("inf"))
            return
        if scheme != "bearer" or not params.get("realm"):
            raise UpstreamUnauthorized(f"registry {ep.name} asks for unsupported auth {scheme[:20]!r}")
        realm = params["realm"]
        if urlsplit(realm).scheme not in ("http", "https"):
            raise UpstreamUnauthorized(f"registry {ep.name} gave a bad token realm")
        if ep.credentialed and not ep.realm_allowed(realm):
            raise UpstreamUnauthorized(
                f"registry {ep.name} sent its token realm to {urlsplit(realm).netloc[:80]}: credentials go "
                "only to an https realm on the registry's host or in its token_realms setting")
        query = {"scope": params.get("scope") or f"repository:{repository}:pull"}
        if params.get("service"):
            query["service"] = params["service"]
        headers, method, form = {}, "GET", None
        if ep.identity_token:  # the OAuth2 flow of the token spec: POST the refresh token
            method, url = "POST", realm
            form = urlencode({"grant_type": "refresh_token", "refresh_token": ep.identity_token,
                              "client_id": "beiran", **query}).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        else:
            if ep.username:
                raw = f"{ep.username}:{ep.password or ''}".encode()
                headers["Authorization"] = "Basic " + base64.b64encode(raw).decode()
            url = realm + ("&" if "?" in realm else "?") + urlencode(query)
        try:
            async with stream_request(url, headers, method=method, body=form, ssl_ctx=ep.ssl_ctx, origin=True,
                                      connect_timeout=self.timeout) as resp:
                body = await resp.read_all(1 << 20, idle_timeout=self.timeout)
        except UpstreamError as exc:
            raise RegistryUnavailable(f"token service of {ep.name}: {exc.message}") from None
        if resp.code in (401, 403):
            raise UpstreamUnauthorized(f"registry {ep.name} refused the credentials for {repository}")
        if resp.code != 200:
            raise RegistryUnavailable(f"token service of {ep.name} answered {resp.code}")
        try:
            doc = json.loads(body)
            token = doc.get("token") or doc.get("access_token")
            expires = float(doc.get("expires_in") or 60)
        except (ValueError, AttributeError, TypeError):
            token = None
        if not token or not isinstance(token, str):
            raise RegistryUnavailable(f"token service of {ep.name} gave no token")
        self._tokens[key] = (f"Bearer {token}", time.monotonic() + max(10.0, expires - 10))

    def _auth_header(self, ep: Endpoint, repository: str) -> str | None:
        cached = self._tokens.get((ep.name, repository))
        if cached and cached[1] > time.monotonic():
            return cached[0]
        if ep.registry_token:
            return f"Bearer {ep.registry_token}"
        return None

    async def _open(self, ep: Endpoint, repository: str, method: str, path: str,
                    headers: dict[str, str]) -> tuple[Any, StreamResponse]:
        """Open a request with auth; returns (context manager, response). The caller exits the cm."""
        for attempt in range(3):
            hdrs = dict(headers)
            auth = self._auth_header(ep, repository)
            if auth:
                hdrs["Authorization"] = auth
            cm = stream_request(ep.url + path, hdrs, method=method, ssl_ctx=ep.ssl_ctx, origin=True,
                                connect_timeout=self.timeout)
            try:
                resp = await cm.__aenter__()
            except UpstreamError as exc:
                raise RegistryUnavailable(f"registry {ep.name} unreachable: {exc.message}") from None
            if resp.code == 401 and attempt < 2:
                challenge = resp.headers.get("WWW-Authenticate", "")
                await cm.__aexit__(None, None, None)
                if ep.registry_token and auth == f"Bearer {ep.registry_token}":
                    raise UpstreamUnauthorized(f"registry {ep.name} refused the registry token for {repository}")
                if auth and auth.startswith("Bearer "):
                    self._tokens.pop((ep.name, repository), None)  # expired or revoked: one new token
                    if attempt == 1:
                        raise UpstreamUnauthorized(f"registry {ep.name} refused its own token for {repository}")
                await self._authenticate(ep, repository, challenge, sent=auth)
                continue
            return cm, resp
        raise UpstreamUnauthorized(f"registry {ep.name}: authentication failed")

    async def _fail(self, ep: Endpoint, resp: StreamResponse, what: str, not_found: type[BeiranError]) -> None:
        """Raise the error an upstream status means (the body's OCI message when there is one)."""
        detail = ""
        try:
            doc = json.loads(await resp.read_all(64 << 10, idle_timeout=self.timeout))
            err = (doc.get("errors") or [{}])[0]
            detail = f": {err.get('code', '')} {err.get('message', '')}".rstrip()
        except (ValueError, AttributeError, TypeError, IndexError, BeiranError):
            pass
        msg = f"registry {ep.name} answered {resp.code} for {what}{detail}"
        if resp.code == 401:
            raise UpstreamUnauthorized(msg)
        if resp.code == 403:
            raise UpstreamDenied(msg)
        if resp.code == 404:
            if "NAME_UNKNOWN" in detail:
                raise NameUnknown(msg)
            raise not_found(msg)
        if resp.code == 429:
            raise TooManyRequests(msg)
        raise RegistryUnavailable(msg)

    # -- manifests -------------------------------------------------------------------------------
    async def head_manifest(self, registry: str, repository: str, reference: str, accept: str) -> ManifestHead:
        ep = self.endpoint(registry)
        path = f"/v2/{repository}/manifests/{reference}"
        cm, resp = await self._open(ep, repository, "HEAD", path, {"Accept": accept})
        try:
            if resp.code != 200:
                await self._fail(ep, resp, _image(repository, reference), ManifestUnknown)
            length = resp.headers.get("Content-Length", "")
            return ManifestHead(resp.headers.get("Docker-Content-Digest"),
                                resp.headers.get("Content-Type", "").split(";")[0].strip(),
                                int(length) if length.isdigit() else None)
        finally:
            await cm.__aexit__(None, None, None)

    async def get_manifest(self, registry: str, repository: str, reference: str,
                           accept: str) -> tuple[bytes, str, str | None]:
        """(bytes, media type, the upstream's Docker-Content-Digest) with the 4 MiB limit."""
        ep = self.endpoint(registry)
        path = f"/v2/{repository}/manifests/{reference}"
        cm, resp = await self._open(ep, repository, "GET", path, {"Accept": accept})
        try:
            if resp.code != 200:
                await self._fail(ep, resp, _image(repository, reference), ManifestUnknown)
            length = resp.headers.get("Content-Length", "")
            if length.isdigit() and int(length) > MAX_MANIFEST:
                raise ManifestInvalid(f"manifest {_image(repository, reference)} is {length} bytes; the limit is "
                                      f"{MAX_MANIFEST}")
            try:
                data = await resp.read_all(MAX_MANIFEST, idle_timeout=self.timeout)
            except ResponseTooLarge:
                raise ManifestInvalid(f"manifest {_image(repository, reference)} exceeds {MAX_MANIFEST} "
                                      "bytes") from None
            except UpstreamError as exc:
                raise RegistryUnavailable(exc.message) from None
            return (data, resp.headers.get("Content-Type", "").split(";")[0].strip(),
                    resp.headers.get("Docker-Content-Digest"))
        finally:
            await cm.__aexit__(None, None, None)

    # -- blobs -----------------------------------------------------------------------------------
    async def head_blob(self, registry: str, repository: str, digest: str) -> int | None:
        ep = self.endpoint(registry)
        cm, resp = await self._open(ep, repository, "HEAD", f"/v2/{repository}/blobs/{digest}", {})
        try:
            if resp.code != 200:
                await self._fail(ep, resp, f"blob {digest[:19]} of {repository}", BlobUnknown)
            length = resp.headers.get("Content-Length", "")
            return int(length) if length.isdigit() else None
        finally:
            await cm.__aexit__(None, None, None)

    async def open_blob(self, registry: str, repository: str, digest: str, offset: int) -> OriginStream:
        """GET /v2/<repo>/blobs/<digest> from `offset` (redirects to storage are followed)."""
        ep = self.endpoint(registry)
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        cm, resp = await self._open(ep, repository, "GET", f"/v2/{repository}/blobs/{digest}", headers)
        if resp.code not in (200, 206):
            try:
                await self._fail(ep, resp, f"blob {digest[:19]} of {repository}", BlobUnknown)
            finally:
                await cm.__aexit__(None, None, None)
        stream = stream_from_response(resp, cm, offset, self.timeout * 3)
        stream.restricted = self.used_credentials(registry, repository)
        return stream

    def used_credentials(self, registry: str, repository: str) -> bool:
        """Did requests for this repository carry credentials (so what they read is private)?"""
        ep = self.endpoint(registry)
        return ep.credentialed and self._auth_header(ep, repository) is not None
