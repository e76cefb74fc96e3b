"""The zeroconf plugin: announce this node as `_beiran._tcp.local.` and connect the nodes it hears.

The instance name is the node's UUID, so two hosts with the same hostname never collide. On stop the
announcements are withdrawn with goodbye packets, so the others drop this node at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, NamedTuple

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


class Wanted(NamedTuple):
    """A service this node announces: its port, TXT and which of the node's addresses it may use."""

    port: int
    txt: dict[str, str]
    only: Callable[[str], bool] | None = None


class ZeroconfPlugin(BaseDiscoveryPlugin):
    """Zeroconf discovery: peers found over mDNS."""

    name = "zeroconf"
    version = __version__

    @classmethod
    def check_config(cls, config: dict[str, Any]) -> None:
        Settings.parse(config)

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self.settings = Settings()
        self.selection: Selection | None = None
        self.aiozc: AsyncZeroconf | None = None
        self.browser: Browser | None = None
        self.wanted: dict[str, Wanted] = {}  # by service type
        self.registered: dict[str, AsyncServiceInfo] = {}
        self.withheld: set[str] = set()  # wanted, but `only` accepts none of the node's addresses
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

    def server_for(self, type_: str) -> str:
        """The host name a service's address records hang on. A service restricted to some of the
        node's addresses gets a host name of its own (`beiran-UUID-apt-proxy.local.`): address
        records belong to host names, so sharing the node's would hand browsers every address."""
        if self.wanted[type_].only is None:
            return self.server
        label = type_.split(".", 1)[0].lstrip("_").replace("_", "-")[:16].strip("-") or "svc"
        return f"beiran-{self.ctx.identity.uuid}-{label}.local."

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        sel = await self.ctx.run_blocking(select, self.settings.interfaces, self.ctx.config.listen_host)
        if not sel.interfaces:
            raise BeiranError("no interface to run mDNS on: " + "; ".join(sel.problems or ("none found",)))
        for problem in sel.problems:
            log.warning("zeroconf: %s", problem)
        self.aiozc, self.selection = self._open(sel), sel
        ident = self.ctx.identity
        self.wanted[SERVICE_TYPE] = Wanted(ident.port, build_txt(ident.uuid, ident.version, ident.port,
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
    async def advertise(self, service_type: str, port: int, properties: dict[str, str],
                        only: Callable[[str], bool] | None = None) -> bool:
        """Announce another service of this node (e.g. `_apt_proxy._tcp` by the apt plugin), under
        the node's UUID, with the announced addresses `only` accepts (none: not announced, or
        withdrawn); calling it again updates it. Returns at once (True): the announcement takes
        ~2 s of probing and is made once mDNS is up, even when called before this plugin started."""
        try:
            type_ = checked_service_type(service_type)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise BadRequest(f"advertise {type_}: bad port {port!r}")
        self.wanted[type_] = Wanted(port, {str(k): str(v) for k, v in (properties or {}).items()}, only)
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

    def addresses_for(self, type_: str) -> list[str]:
        """The node's announced addresses that this service may be announced on."""
        if self.selection is None:
            return []
        only = self.wanted[type_].only
        return [a for a in self.selection.announce if only is None or only(a)]

    async def _register(self, type_: str) -> bool:
        """Register, or re-announce with the current addresses when already registered; withdraw
        a service none of whose addresses may be announced any more."""
        assert self.aiozc is not None and self.selection is not None
        port, props, _ = self.wanted[type_]
        addresses = self.addresses_for(type_)
        info = AsyncServiceInfo(type_, f"{self.instance}.{type_}", port=port, properties=props,
                                server=self.server_for(type_), parsed_addresses=addresses)
        if not addresses:
            return await self._withhold(type_, info)
        self.withheld.discard(type_)
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

    async def _withhold(self, type_: str, info: AsyncServiceInfo) -> bool:
        assert self.aiozc is not None
        if type_ not in self.withheld:
            log.info("zeroconf: not announcing %s: none of %s may carry it", info.name,
                     ", ".join(self.selection.announce) if self.selection else "the node's addresses")
        self.withheld.add(type_)
        old = self.registered.pop(type_, None)
        if old is not None:
            try:  # goodbye packets: browsers drop it now rather than when its records expire
                await (await self.aiozc.async_unregister_service(old))
            except Exception as exc:  # noqa: BLE001 - its records expire on their own
                log.warning("zeroconf: withdrawing %s failed: %s", info.name, exc)
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
        return {"announced": sorted(self.registered), "withheld": sorted(self.withheld),
                "services_seen": len(seen),
                "peers": sum(1 for s in seen if s.state == "peer")}

    def report(self) -> dict[str, Any]:
        return {
            "instance": self.instance, "server": self.server, "cluster": self.settings.cluster,
            "network": self.selection.describe() if self.selection else None,
            "announced": [{"type": t, "name": f"{self.instance}.{t}", "port": w.port, "txt": w.txt,
                           "registered": t in self.registered, "withheld": t in self.withheld,
                           "addresses": self.addresses_for(t), "error": self.failures.get(t)}
                          for t, w in sorted(self.wanted.items())],
            "services": self.browser.status() if self.browser else [],
        }


PLUGIN = ZeroconfPlugin
