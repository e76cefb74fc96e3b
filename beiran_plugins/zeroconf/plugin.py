"""The zeroconf plugin: announce this node as `_beiran._tcp.local.` and connect the nodes it hears.

The instance name is the node's UUID, so two hosts with the same hostname never collide. On stop the
announcements are withdrawn with goodbye packets, so the others drop this node at once.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from zeroconf import IPVersion, NonUniqueNameException
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from beiran.errors import BadRequest, BeiranError
from beiran.plugin import BaseDiscoveryPlugin
from beiran_plugins.zeroconf import __version__
from beiran_plugins.zeroconf.browser import Browser
from beiran_plugins.zeroconf.netif import Selection, select
from beiran_plugins.zeroconf.settings import SERVICE_TYPE, Settings, checked_service_type
from beiran_plugins.zeroconf.txt import build_txt

log = logging.getLogger("beiran.zeroconf")


class ZeroconfPlugin(BaseDiscoveryPlugin):
    """Zeroconf discovery: peers found over mDNS."""

    name = "zeroconf"
    version = __version__

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self.settings = Settings()
        self.selection: Selection | None = None
        self.aiozc: AsyncZeroconf | None = None
        self.browser: Browser | None = None
        self.wanted: dict[str, tuple[int, dict[str, str]]] = {}  # service type -> (port, TXT)
        self.registered: dict[str, AsyncServiceInfo] = {}
        self.failures: dict[str, str] = {}
        self._dirty: set[str] = set()  # service types to (re-)announce
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    async def init(self, config: dict[str, Any]) -> None:
        await super().init(config)
        self.settings = Settings.parse(config)

    @property
    def instance(self) -> str:
        return self.ctx.identity.uuid

    @property
    def server(self) -> str:
        return f"beiran-{self.ctx.identity.uuid}.local."

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        sel = await self.ctx.run_blocking(select, self.settings.interfaces, self.ctx.config.listen_host)
        if not sel.interfaces:
            raise BeiranError("no interface to run mDNS on: " + "; ".join(sel.problems or ("none found",)))
        for problem in sel.problems:
            log.warning("zeroconf: %s", problem)
        self.aiozc, self.selection = self._open(sel), sel
        ident = self.ctx.identity
        self.wanted[SERVICE_TYPE] = (ident.port, build_txt(ident.uuid, ident.version, ident.port,
                                                           self.settings.cluster, ident.plugins))
        self.browser = Browser(self, SERVICE_TYPE)
        self.browser.start(self.aiozc.zeroconf)
        self._mark(*self.wanted)  # ours, and any advertised by plugins that started before this one
        self._tasks = [asyncio.ensure_future(self._announcer()), asyncio.ensure_future(self._watch_addresses())]
        log.info("zeroconf: mDNS on %s (%s), announcing %s as %s", ", ".join(map(str, sel.interfaces)),
                 sel.ip_version.name, ", ".join(sel.announce), self.instance)

    def _open(self, sel: Selection) -> AsyncZeroconf:
        try:
            return AsyncZeroconf(interfaces=list(sel.interfaces), ip_version=sel.ip_version)
        except (OSError, RuntimeError) as exc:
            v4 = [i for i in sel.interfaces if isinstance(i, str)]
            if sel.ip_version is not IPVersion.All or not v4:
                raise BeiranError(f"cannot open mDNS sockets on {list(sel.interfaces)}: {exc}") from None
            log.warning("zeroconf: IPv6 mDNS unavailable (%s); using IPv4 only", exc)
            return AsyncZeroconf(interfaces=v4, ip_version=IPVersion.V4Only)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self.browser is not None:
            await self.browser.stop()
        if self.aiozc is not None:
            try:  # async_close sends goodbye packets for every registration first
                await asyncio.wait_for(self.aiozc.async_close(), 5)
            except Exception as exc:  # noqa: BLE001 - stop must not raise
                log.warning("zeroconf: closing mDNS: %s", exc)
            self.aiozc = None

    # -- announcing ------------------------------------------------------------------------------
    async def advertise(self, service_type: str, port: int, properties: dict[str, str]) -> bool:
        """Announce another service of this node (e.g. `_apt_proxy._tcp` by the apt plugin), under
        the node's UUID; calling it again updates it. Returns at once (True): the announcement takes
        ~2 s of probing and is made once mDNS is up, even when called before this plugin started."""
        try:
            type_ = checked_service_type(service_type)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise BadRequest(f"advertise {type_}: bad port {port!r}")
        self.wanted[type_] = (port, {str(k): str(v) for k, v in (properties or {}).items()})
        self._mark(type_)
        return True

    def _mark(self, *types: str) -> None:
        self._dirty.update(types)
        self._wake.set()

    async def _announcer(self) -> None:
        """The one task that registers services, so announcements never race each other."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._dirty:
                await self._register(self._dirty.pop())

    async def _register(self, type_: str) -> bool:
        """Register, or re-announce with the current addresses when already registered."""
        assert self.aiozc is not None and self.selection is not None
        port, props = self.wanted[type_]
        info = AsyncServiceInfo(type_, f"{self.instance}.{type_}", port=port, properties=props,
                                server=self.server, parsed_addresses=list(self.selection.announce))
        try:
            if type_ in self.registered:
                await (await self.aiozc.async_update_service(info))
            else:
                await (await self.aiozc.async_register_service(info, strict=False))
            self.registered[type_] = info
            self.failures.pop(type_, None)
            log.info("zeroconf: announced %s on port %d", info.name, port)
            return True
        except NonUniqueNameException:
            self.failures[type_] = f"{info.name} is already announced by another host (a copied data dir?)"
            log.error("zeroconf: %s", self.failures[type_])
        except Exception as exc:  # noqa: BLE001 - announcing fails alone; browsing goes on
            self.failures[type_] = f"{type(exc).__name__}: {exc}"
            log.error("zeroconf: announcing %s failed: %s", info.name, exc)
        return False

    async def _watch_addresses(self) -> None:
        """Re-announce when the local addresses change (DHCP renewals, interfaces coming up)."""
        while True:
            await asyncio.sleep(self.settings.address_check_interval)
            try:
                sel = await self.ctx.run_blocking(select, self.settings.interfaces, self.ctx.config.listen_host)
            except Exception as exc:  # noqa: BLE001
                log.warning("zeroconf: reading local addresses failed: %s", exc)
                continue
            if sel == self.selection or not sel.interfaces or self.aiozc is None:
                continue
            log.info("zeroconf: local addresses changed to %s; announcing again", ", ".join(sel.announce))
            old, self.selection = self.selection, sel
            if old is None or (sel.interfaces, sel.ip_version) != (old.interfaces, old.ip_version):
                try:
                    await self.aiozc.async_update_interfaces(list(sel.interfaces), sel.ip_version)
                except Exception as exc:  # noqa: BLE001 - the old sockets keep working meanwhile
                    log.warning("zeroconf: switching mDNS to %s failed: %s", list(sel.interfaces), exc)
            self._mark(*self.wanted)

    # -- status ----------------------------------------------------------------------------------
    def status_info(self) -> dict[str, Any]:
        seen = self.browser.seen.values() if self.browser else []
        return {"announced": sorted(self.registered), "services_seen": len(seen),
                "peers": sum(1 for s in seen if s.state == "peer")}

    def report(self) -> dict[str, Any]:
        return {
            "instance": self.instance, "server": self.server, "cluster": self.settings.cluster,
            "network": self.selection.describe() if self.selection else None,
            "announced": [{"type": t, "name": f"{self.instance}.{t}", "port": p, "txt": props,
                           "registered": t in self.registered, "error": self.failures.get(t)}
                          for t, (p, props) in sorted(self.wanted.items())],
            "services": self.browser.status() if self.browser else [],
        }


PLUGIN = ZeroconfPlugin
