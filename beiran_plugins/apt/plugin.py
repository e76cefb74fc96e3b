"""The apt plugin: an apt proxy on its own listener whose .debs come from the cluster."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from beiran.errors import BadRequest, PluginError
from beiran.fetch.origins import http_origin
from beiran.plugin import BasePackagePlugin, OriginStream, PluginStatus
from beiran_plugins.apt import __version__, trust
from beiran_plugins.apt.archive import Archive, Blob
from beiran_plugins.apt.config import AptConfig, parse_config
from beiran_plugins.apt.indexes import IndexService
from beiran_plugins.apt.urls import Target, safe_relpath

if TYPE_CHECKING:
    from tornado.httpserver import HTTPServer

    from beiran.fetch.fetcher import FetchJob

log = logging.getLogger("beiran.apt")
SERVICE_TYPE = "_apt_proxy._tcp.local."


class AptPlugin(BasePackagePlugin):
    """apt: a proxy whose .debs come from the cluster, verified through apt's signed chain."""

    name = "apt"
    version = __version__

    cfg: AptConfig
    root: Path
    archive: Archive
    indexes: IndexService
    keyrings: list[str]
    ssl_ctx: ssl.SSLContext

    async def init(self, config: dict[str, Any]) -> None:
        self.config = config
        self.cfg = parse_config(config)
        self.root = self.ctx.config.data_dir / "apt"
        self.root.mkdir(parents=True, exist_ok=True)
        self.stats: Counter[str] = Counter()
        self.server: HTTPServer | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        from tornado.netutil import bind_sockets

        from beiran.listener import GuardedHTTPServer
        from beiran_plugins.apt.proxy import make_app

        self.ssl_ctx = ssl.create_default_context()
        if self.cfg.ca_file:
            self.ssl_ctx.load_verify_locations(cafile=self.cfg.ca_file)
        self.keyrings = await self.ctx.run_blocking(trust.prepare_keyrings, self.cfg.keyring_files(),
                                                    self.root / "keyrings")
        if not self.keyrings:
            log.warning("apt: no keyrings found: no Release can verify, so only trusted_sources are shared")
        self.archive = Archive(self)
        await self.archive.load()
        self.indexes = IndexService(self)
        host, port = self.cfg.host, self.cfg.port
        try:
            socks = bind_sockets(port, address=None if host in ("0.0.0.0", "") else host)
        except OSError as exc:
            raise PluginError(f"apt proxy cannot listen on {self.cfg.listen}: {exc.strerror}") from None
        self.server = GuardedHTTPServer(make_app(self), limits=self.ctx.config.limits, max_body_size=1 << 16)
        self.server.add_sockets(socks)
        self.port = socks[0].getsockname()[1]
        log.info("apt proxy listening on %s:%d (%d keyrings)", host, self.port, len(self.keyrings))
        if self.cfg.advertise:
            self._spawn(self._advertise())

    async def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        if self.server is not None:
            self.server.stop()
            try:
                await asyncio.wait_for(self.server.close_all_connections(), 2.0)
            except (TimeoutError, Exception):  # noqa: BLE001 - stop must not raise
                pass
            self.server = None

    def _spawn(self, coro: Any) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _advertise(self) -> None:
        """Announce `_apt_proxy._tcp` through every discovery plugin once it is running, only on
        the addresses where the proxy listens and admits the clients (`beiran.advertising`): a
        host that trusts the announcement must find a proxy that serves it."""
        from beiran.advertising import client_addresses

        host = self.cfg.host
        bound = ["0.0.0.0", "::"] if host in ("0.0.0.0", "") else [host]  # as start() binds them
        only = await self.ctx.run_blocking(client_addresses, bound, self.ctx.config.client_networks())
        if isinstance(only, str):
            log.info("apt: proxy not advertised as %s: %s (set [plugins.apt] listen to a LAN address "
                     "and client_cidrs to admit the LAN to share it)", SERVICE_TYPE, only)
            return
        props = {"beiran": self.ctx.identity.uuid, "version": __version__}
        for plugin in self.ctx.plugins.discovery_plugins():
            for _ in range(300):
                if plugin.status in (PluginStatus.READY, PluginStatus.ERROR, PluginStatus.STOPPED):
                    break
                await asyncio.sleep(0.1)
            if plugin.status != PluginStatus.READY:
                continue
            try:
                if await plugin.advertise(SERVICE_TYPE, self.port, props, only=only):
                    log.info("apt: proxy advertised as %s via %s", SERVICE_TYPE, plugin.name)
            except Exception as exc:  # noqa: BLE001 - discovery is a nicety, never fatal
                log.warning("apt: %s could not advertise the proxy: %s", plugin.name, exc)

    # -- the fetch contract ----------------------------------------------------------------------
    def validate_source(self, params: dict[str, Any], *, from_peer: bool) -> dict[str, Any]:
        base, path = params.get("base"), params.get("path")
        if not isinstance(base, str) or not base.endswith("/") or len(base) > 1024:
            raise BadRequest("apt source needs the archive base URL key it was seen under")
        return {"base": base, "path": safe_relpath(path)}

    async def open_origin(self, params: dict[str, Any], digest: str, offset: int, *,
                          from_peer: bool) -> OriginStream:
        url = self.archive.origin_url(params, digest)
        await self.archive.check_digest(params, digest)
        self.stats["origin_fetches"] += 1
        return await http_origin(url, offset, ssl_ctx=self.ssl_ctx, what=f"apt {params['path']}")

    def prefetch(self, target: Target) -> asyncio.Task:
        """Fetch a trusted .deb into the store ahead of its request (errors are left for the
        request itself to meet and report)."""
        async def run() -> None:
            blob = await self.archive.package(target)
            if blob is None or self.ctx.store.has(blob.digest):
                return
            self.stats["prefetched"] += 1
            try:
                await self.ctx.fetcher.fetch(blob.digest, blob.size, blob.source)
            except Exception as exc:  # noqa: BLE001 - the request for it will report the failure
                log.debug("apt: prefetch of %s failed: %s", target.url, exc)
        return self._spawn(run())

    def after_fetch(self, target: Target, blob: Blob, job: FetchJob, by_hash: bool) -> asyncio.Task:
        """Once the core has the blob (even if the client went away): pin it and learn from it."""
        async def run() -> None:
            try:
                entry = await asyncio.shield(job.done)
            except Exception:  # noqa: BLE001 - the failure went to the client already
                return
            if by_hash:
                await self.ctx.store.unpin("apt", f"index:{target.url}")
                await self.ctx.store.pin(blob.digest, "apt", f"index:{target.url}")
                await self.archive.learn_by_hash(target, blob, Path(self.ctx.store.file_of(entry)))
            else:
                await self.archive.record_deb(blob)
                self.stats["debs_via_cluster"] += 1
        return self._spawn(run())

    def counters(self) -> dict[str, int]:
        return dict(self.stats + self.archive.stats) if hasattr(self, "archive") else dict(self.stats)

    def status_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"listen": self.cfg.listen}
        if hasattr(self, "archive"):
            info.update({"archives": len(self.archive.bases), "keyrings": len(self.keyrings),
                         "counters": dict(self.stats + self.archive.stats)})
        return info


PLUGIN = AptPlugin
