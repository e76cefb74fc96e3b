"""The npm plugin: an npm registry proxy under /npm/ whose tarballs come from the cluster.

    npm config set registry http://127.0.0.1:8888/npm/      # `beiran npm configure` prints it

Packuments come from the upstream (conditional requests, kept for offline use, tarball URLs
rewritten to this node); each tarball is a core fetch of the sha512 in its `dist.integrity`.

Configuration (`[plugins.npm]`, all optional):

    upstream = "https://registry.npmjs.org"   # the registry proxied
    token = "..."                               # or username + password: sent to the upstream only
    ca_file = "/etc/ssl/private-registry.pem"
    timeout = 30                                # seconds for one upstream metadata request
    metadata_ttl = 120                          # seconds a packument is served before revalidating
    writes = "refuse"                           # or "forward": publish, login, audit, dist-tag,
                                                # search, whoami... go to the upstream unchanged
    share_metadata = true                       # upstream down: ask peers for packuments
    prefetch_max_bytes = 0                      # > 0: a served packument's latest tarball is
                                                # fetched from a peer holding it, up to this size
    allow_uppercase_names = false               # legacy names like JSONStream
"""

from __future__ import annotations

import logging
from typing import Any

from beiran.errors import BadRequest, ConfigError
from beiran.fetch.origins import http_origin
from beiran.plugin import BasePackagePlugin, OriginStream
from beiran.store.digest import parse_digest
from beiran_plugins.npm import __version__
from beiran_plugins.npm.metadata import sha512_of, sri, tarball_file
from beiran_plugins.npm.names import validate_name, validate_version
from beiran_plugins.npm.packuments import Packument, PackumentCache
from beiran_plugins.npm.prefetch import PREFETCH_MAX_BYTES, Prefetcher
from beiran_plugins.npm.upstream import Upstream

log = logging.getLogger("beiran.npm")
DEFAULT_UPSTREAM = "https://registry.npmjs.org"
SETTINGS = {"enabled", "upstream", "token", "username", "password", "ca_file", "timeout", "metadata_ttl",
            "writes", "share_metadata", "allow_uppercase_names", "max_packument_size", "hold_bytes",
            "prefetch_max_bytes"}


class NPMPlugin(BasePackagePlugin):
    """npm: a registry proxy whose tarballs come from the cluster."""

    name = "npm"
    version = __version__
    config_keys = frozenset(SETTINGS)

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        # built by init() from the plugin's settings; nothing reads them before it ran
        self.upstream: Upstream
        self.packuments: PackumentCache
        self.prefetcher: Prefetcher
        self.writes = "refuse"
        self.allow_uppercase = False
        self.hold = 4 << 20
        self.events: dict[str, int] = {}

    async def init(self, config: dict[str, Any]) -> None:
        self.config = config
        self.writes = str(config.get("writes", "refuse"))
        if self.writes not in ("refuse", "forward"):
            raise ConfigError('[plugins.npm] writes must be "refuse" or "forward"')
        try:
            timeout = float(config.get("timeout", 30))
            ttl = float(config.get("metadata_ttl", 120))
            self.hold = int(config.get("hold_bytes", 4 << 20))
            max_doc = int(config.get("max_packument_size", 256 << 20))
            prefetch_max = int(config.get("prefetch_max_bytes", PREFETCH_MAX_BYTES))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"[plugins.npm]: {exc}") from None
        if timeout <= 0 or ttl < 0:
            raise ConfigError("[plugins.npm]: timeout must be > 0 and metadata_ttl >= 0")
        self.allow_uppercase = bool(config.get("allow_uppercase_names", False))
        self.upstream = Upstream(str(config.get("upstream") or DEFAULT_UPSTREAM), token=config.get("token"),
                                 username=config.get("username"), password=config.get("password"),
                                 ca_file=config.get("ca_file"), timeout=timeout, max_packument_size=max_doc)
        root = self.ctx.config.data_dir / "npm" / "packuments"
        self.packuments = PackumentCache(self.ctx, self.upstream, root, ttl,
                                         share=bool(config.get("share_metadata", True)))
        self.prefetcher = Prefetcher(self.ctx, prefetch_max)

    async def start(self) -> None:
        await self.ctx.run_blocking(lambda: self.packuments.root.mkdir(parents=True, exist_ok=True))
        await self.packuments.load()
        log.info("npm: proxying %s under /npm/ (writes: %s)", self.upstream.url, self.writes)

    async def stop(self) -> None:
        await self.prefetcher.stop()
        await self.packuments.flush()

    def status_info(self) -> dict[str, Any]:
        return {"upstream": self.upstream.url if self.upstream else None, "writes": self.writes,
                "counters": {**self.events, "tarballs_prefetched": self.prefetcher.started},
                "packuments": dict(self.packuments.stats) if self.packuments else {}}

    def counters(self) -> dict[str, int]:
        stats = self.packuments.stats if self.packuments else {}
        return {**self.events, "tarballs_prefetched": self.prefetcher.started,
                **{f"packuments_{k}": v for k, v in stats.items()}}

    def count(self, what: str, n: int = 1) -> None:
        self.events[what] = self.events.get(what, 0) + n

    # -- names -----------------------------------------------------------------------------------
    def check_name(self, name: str) -> str:
        return validate_name(name, self.allow_uppercase)

    def tarball_url(self, p: Packument, name: str, version: str) -> str:
        """Where the upstream keeps this tarball. Only a packument the upstream itself sent is
        trusted for the URL; for any other copy the URL is built from the configured upstream."""
        manifest = p.manifest(version) or {}
        url = (manifest.get("dist") or {}).get("tarball")
        if p.origin == "upstream" and isinstance(url, str) and url.startswith(("http://", "https://")):
            return url
        return self.upstream.tarball_url(name, tarball_file(name, version, manifest))

    # -- the fetch API ---------------------------------------------------------------------------
    def validate_source(self, params: dict[str, Any], *, from_peer: bool) -> dict[str, Any]:
        if set(params) != {"package", "version"}:
            raise BadRequest('npm source must be {"package": NAME, "version": VERSION}')
        return {"package": self.check_name(params["package"]), "version": validate_version(params["version"])}

    async def open_origin(self, params: dict[str, Any], digest: str, offset: int, *,
                          from_peer: bool) -> OriginStream:
        name, version = params["package"], params["version"]
        p, version = await self.packuments.any_with_version(name, version=version)
        dist = (p.manifest(version) or {}).get("dist") or {}
        expected = sha512_of(dist)
        if expected is None or str(expected) != str(parse_digest(digest)):
            raise BadRequest(f"{digest[:19]} is not the sha512 integrity of {name}@{version}")
        url = self.tarball_url(p, name, version)
        up = self.upstream
        headers = {} if from_peer else up.headers_for(url)  # a peer's fetch never carries the credentials
        stream = await http_origin(url, offset, headers, up.ssl_ctx if up.is_upstream(url) else None,
                                   what=f"npm {name}@{version}")
        stream.restricted = bool(headers)  # read with the upstream's credentials: private to this node
        return stream

    async def pin(self, digest: str, name: str, version: str) -> None:
        ref = f"{name}@{version}"
        if ("npm", ref) not in self.ctx.store.pins.get(digest, set()):
            await self.ctx.store.pin(digest, "npm", ref)

    # -- listing ---------------------------------------------------------------------------------
    async def packages(self, cluster: bool = False) -> list[dict[str, Any]]:
        """Tarballs in this node's store (pinned by this plugin); with `cluster`, also the sha512
        blobs other nodes hold, named by the packuments stored here."""
        store = self.ctx.store
        me = self.ctx.identity.uuid
        rows: dict[str, dict[str, Any]] = {}
        for digest, holders in store.pins.items():
            entry = store.get(digest)
            for owner, ref in holders:
                if owner != "npm" or entry is None:
                    continue
                name, _, version = ref.rpartition("@")
                rows[digest] = {"name": name, "version": version, "size": entry.size, "digest": digest,
                                "integrity": sri(digest), "nodes": {me: "complete"}}
        if cluster:
            index = await self.packuments.digest_index()
            for digest, item in self.ctx.availability.cluster_view().items():
                known = rows.get(digest)
                if known is None and digest.startswith("sha512:"):
                    # npm is the one sha512 user; a tarball no packument here names is listed unnamed
                    name, version = index.get(digest, ("", ""))
                    known = rows[digest] = {"name": name, "version": version, "size": item.get("size"),
                                            "digest": digest, "integrity": sri(digest), "nodes": {}}
                if known is not None:
                    known["nodes"].update(item["nodes"])
        return sorted(rows.values(), key=lambda r: (r["name"], r["version"]))

    def info(self) -> dict[str, Any]:
        cfg = self.ctx.config
        host = cfg.listen_host if cfg.listen_host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        return {"registry": f"http://{host}:{cfg.listen_port}/npm/", "upstream": self.upstream.url,
                "writes": self.writes, "metadata_ttl": self.packuments.ttl}


PLUGIN = NPMPlugin
