"""The apt plugin: an apt proxy on its own listener whose .debs come from the cluster."""

from __future__ import annotations

import asyncio
import errno
import logging
import ssl
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from beiran.errors import BadRequest, PluginError
from beiran.fetch.origins import http_origin
from beiran.plugin import BasePackagePlugin, OriginStream, PluginStatus
from beiran_plugins.apt import __version__, trust
from beiran_plugins.apt.archive import Archive, Blob
from beiran_plugins.apt.config import DEFAULT_LISTEN, AptConfig, parse_config
from beiran_plugins.apt.indexes import IndexService
from beiran_plugins.apt.metrics import AptCollector
from beiran_plugins.apt.sources import Sources, key_block_file
from beiran_plugins.apt.urls import Target, safe_relpath

if TYPE_CHECKING:
    from tornado.httpserver import HTTPServer

    from beiran.fetch.fetcher import FetchJob

log = logging.getLogger("beiran.apt")
SERVICE_TYPE = "_apt_proxy._tcp.local."


@dataclass
class KeyChoice:
    """The keys one Release is checked with, as apt would pick them for its source."""

    keyrings: list[str]  # ready for gpgv
    places: list[str]  # where they were looked for (files, or directories ending in /)
    fingerprints: list[str]  # signed-by fingerprints the signer must match (empty: any key)
    where: str  # "signed-by in FILE" or "default keyrings"


class AptPlugin(BasePackagePlugin):
    """apt: a proxy whose .debs come from the cluster, verified through apt's signed chain."""

    name = "apt"
    version = __version__

    @classmethod
    def check_config(cls, config: dict[str, Any]) -> None:
        parse_config(config)

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
            log.warning("apt: no keyrings found in %s: only sources whose signed-by names a key, and "
                        "trusted_sources, are shared", ", ".join(self.cfg.keyring_places()))
        self.sources = Sources(self.cfg.apt_dir, self.cfg.port)
        self.archive = Archive(self)
        await self.archive.load()
        self.indexes = IndexService(self)
        host, port = self.cfg.host, self.cfg.port
        try:
            socks = bind_sockets(port, address=None if host in ("0.0.0.0", "") else host)
        except OSError as exc:
            raise PluginError(listen_error(self.cfg.listen, exc)) from None
        self.server = GuardedHTTPServer(make_app(self), limits=self.ctx.config.limits, max_body_size=1 << 16)
        self.server.add_sockets(socks)
        self.port = socks[0].getsockname()[1]
        log.info("apt proxy listening on %s:%d (%d keyrings)", host, self.port, len(self.keyrings))
        self._collector: AptCollector | None = AptCollector(self)
        try:
            self.ctx.metrics.registry.register(self._collector)
        except ValueError:  # already there (a restarted plugin)
            pass
        if self.cfg.advertise:
            self._spawn(self._advertise())

    async def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        if (collector := getattr(self, "_collector", None)) is not None:
            try:
                self.ctx.metrics.registry.unregister(collector)
            except KeyError:
                pass
            self._collector = None
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

    def prefetch(self, targets: list[Target]) -> asyncio.Task:
        """Fetch trusted .debs into the store ahead of their requests (looked up together, in one
        database hop; errors are left for each request itself to meet and report)."""
        async def run() -> None:
            for blob in await self.archive.packages(targets):
                if blob is not None and not self.ctx.store.has(blob.digest):
                    self._spawn(self._prefetch_one(blob))
        return self._spawn(run())

    async def _prefetch_one(self, blob: Blob) -> None:
        self.stats["prefetched"] += 1
        try:
            await self.ctx.fetcher.fetch(blob.digest, blob.size, blob.source)
            # pinned and listed now, so the request for it need not wait for these writes
            # (the rows are written behind, several .debs in one transaction)
            await self.archive.record_deb(blob, defer=True)
        except Exception as exc:  # noqa: BLE001 - the request for it will report the failure
            log.debug("apt: prefetch of %s failed: %s", blob.path, exc)

    def after_fetch(self, target: Target, blob: Blob, job: FetchJob, by_hash: bool) -> asyncio.Task | None:
        """Once the core has the blob (even if the client went away): pin it and learn from it.
        None when there is nothing left to do (a prefetched .deb is stored and recorded already)."""
        if not by_hash and job.done.done() and not job.failed and self.archive.recorded(blob):
            self.stats["debs_via_cluster"] += 1
            return None

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

    # -- trust -----------------------------------------------------------------------------------
    def keys_for(self, release_dir: str) -> KeyChoice:
        """Blocking. A source this machine's apt names with `signed-by`: exactly those keys (files,
        an embedded key, and/or fingerprints out of apt's default keyrings), as apt checks it.
        Any other archive: every keyring apt could be told to use here (`keyring_files`)."""
        _, signed = self.sources.signed_by(release_dir)
        work = self.root / "keyrings"
        if signed is not None and (signed.files or signed.key_block):
            files = list(signed.files) or [key_block_file(signed.key_block or "", work)]
            return KeyChoice(trust.prepare_keyrings(files, work), files, list(signed.fingerprints),
                             f"signed-by in {signed.where}")
        if signed is not None and signed.fingerprints:
            places = self.cfg.keyring_places()[:2] if not self.cfg.keyrings else list(self.cfg.keyrings)
            return KeyChoice(trust.prepare_keyrings(self.cfg.apt_default_keyrings(), work), places,
                             list(signed.fingerprints), f"signed-by in {signed.where}")
        return KeyChoice(trust.prepare_keyrings(self.cfg.keyring_files(), work), self.cfg.keyring_places(), [],
                         "default keyrings")

    def proxy_address(self) -> dict[str, Any]:
        """What `beiran apt configure` / `proxy-detect` point apt at: the listener as bound."""
        host = self.cfg.host
        port = getattr(self, "port", None) or self.cfg.port
        if host in ("0.0.0.0", "", "::"):
            host = "127.0.0.1"
        shown = f"[{host}]" if ":" in host else host
        return {"listen": self.cfg.listen, "url": f"http://{shown}:{port}", "running": self.server is not None}

    def status_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"listen": self.cfg.listen}
        if hasattr(self, "archive"):
            info.update({"archives": len(self.archive.bases), "keyrings": len(self.keyrings),
                         "counters": dict(self.stats + self.archive.stats)})
        return info


def listen_error(listen: str, exc: OSError) -> str:
    """The proxy cannot bind: say what to change (3142 is apt-cacher-ng's port too)."""
    message = f"apt proxy cannot listen on {listen}: {exc.strerror or exc}"
    if exc.errno == errno.EADDRINUSE:
        host = listen.rsplit(":", 1)[0] or "127.0.0.1"
        message += (f" (another program holds it{', e.g. apt-cacher-ng' if listen.endswith(':3142') else ''}): "
                    f'set another address with [plugins.apt] listen = "{host}:3143" '
                    f"(or BEIRAN_PLUGINS__APT__LISTEN) and point apt at it with `beiran apt configure`")
    elif exc.errno == errno.EADDRNOTAVAIL:
        message += f' (no such local address): set [plugins.apt] listen = "{DEFAULT_LISTEN}" or an address of this host'
    return message


PLUGIN = AptPlugin
