"""The dns plugin: peers from SRV and A/AAAA records, looked up again every `interval` (or sooner,
when the records' TTL is shorter), e.g. a Kubernetes headless service.

A name that fails to look up keeps its last answer (a flaky DNS server must not disconnect the
cluster) and is logged when it starts and stops failing, not on every refresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from beiran.plugin import BaseDiscoveryPlugin
from beiran_plugins.dns import __version__
from beiran_plugins.dns.lookup import LookupFailed, Result, lookup, make_resolver
from beiran_plugins.dns.settings import Name, Settings
from beiran_plugins.dns.targets import Targets, endpoint_url

log = logging.getLogger("beiran.dns")


@dataclass
class NameState:
    name: Name
    state: str = "pending"  # pending, ok, empty, failing
    detail: str = ""
    endpoints: list[tuple[str, int]] = field(default_factory=list)
    ttl: int | None = None
    lookups: int = 0
    failures: int = 0
    since: float = field(default_factory=time.time)
    last_lookup: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name.label, "type": "SRV" if self.name.srv else "A/AAAA", "state": self.state,
                "detail": self.detail, "targets": [endpoint_url(ip, port) for ip, port in self.endpoints],
                "ttl": self.ttl, "lookups": self.lookups, "failures": self.failures, "since": self.since,
                "last_lookup": self.last_lookup}


class DNSPlugin(BaseDiscoveryPlugin):
    """DNS discovery: peers from SRV and A/AAAA records."""

    name = "dns"
    version = __version__

    @classmethod
    def check_config(cls, config: dict[str, Any]) -> None:
        Settings.parse(config)

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self.settings = Settings()
        self.resolver: Any = None
        self.names: dict[str, NameState] = {}
        self.targets = Targets(self)
        self.next_refresh: float | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def init(self, config: dict[str, Any]) -> None:
        await super().init(config)
        self.settings = Settings.parse(config)
        self.names = {n.label: NameState(n) for n in self.settings.names}

    async def start(self) -> None:
        if not self.names:
            log.info("dns: no names configured ([plugins.dns] names); nothing to look up")
            return
        self.resolver = make_resolver(self.settings)
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self.targets.stop()

    async def reconfigure(self, config: dict[str, Any]) -> bool:
        """On reload: new names, nameservers and timings apply at once (a lookup right away); targets
        that no remaining name lists are dropped by that refresh."""
        settings = Settings.parse(config)  # a bad section raises: the running one is kept
        self.config, self.settings = config, settings
        self.names = {n.label: st if (st := self.names.get(n.label)) and st.name == n else NameState(n)
                      for n in settings.names}
        self.resolver = make_resolver(settings)
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())
        else:
            self.refresh_now()
        return True

    def refresh_now(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        while True:
            # cleared before the lookup, not after: a reload that asks for a refresh while one is
            # running gets another one at once instead of waiting a whole interval
            self._wake.clear()
            try:
                wait = await self.refresh()
            except Exception:
                log.exception("dns: refresh failed")
                wait = self.settings.interval
            self.next_refresh = time.time() + wait
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    async def refresh(self) -> float:
        """Look every name up, update the targets; returns the seconds until the next refresh."""
        await asyncio.gather(*(self._lookup(st) for st in self.names.values()))
        current: dict[str, list[str]] = {}
        for st in self.names.values():
            for ip, port in st.endpoints:
                current.setdefault(endpoint_url(ip, port), []).append(st.name.label)
        self.targets.update(current)
        ttls = [st.ttl for st in self.names.values() if st.state in ("ok", "empty") and st.ttl is not None]
        wait = self.settings.interval
        if ttls:
            wait = min(wait, max(float(min(ttls)), self.settings.min_interval))
        return wait

    async def _lookup(self, st: NameState) -> None:
        st.lookups += 1
        st.last_lookup = time.time()
        try:
            result = await lookup(self.resolver, st.name)
        except LookupFailed as exc:
            st.failures += 1
            self._set(st, "failing", f"{exc}; keeping the last answer ({len(st.endpoints)} targets)")
            return
        except Exception as exc:  # noqa: BLE001 - an unexpected resolver error is a failure too
            st.failures += 1
            self._set(st, "failing", f"{type(exc).__name__}: {exc}")
            return
        st.endpoints, st.ttl = result.endpoints, result.ttl
        self._set(st, "ok" if result.endpoints else "empty",
                  f"{len(result.endpoints)} targets" if result.endpoints else "no records")

    def _set(self, st: NameState, state: str, detail: str) -> None:
        if state != st.state:
            level = logging.WARNING if state == "failing" else logging.INFO
            log.log(level, "dns: %s: %s (%s)", st.name.label, state, detail)
            st.since = time.time()
        st.state, st.detail = state, detail

    async def lookup_once(self, name: Name) -> Result:
        """A one-off lookup with this plugin's resolver (for `beiran dns lookup`)."""
        if self.resolver is None:
            self.resolver = make_resolver(self.settings)
        return await lookup(self.resolver, name)

    def status_info(self) -> dict[str, Any]:
        return {"names": len(self.names), "failing": sorted(k for k, v in self.names.items() if v.state == "failing"),
                "targets": len(self.targets.targets),
                "peers": sum(1 for t in self.targets.targets.values() if t.state == "peer")}

    def report(self) -> dict[str, Any]:
        s = self.settings
        return {"nameservers": [f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}" for ip, port in s.nameservers]
                or "system", "interval": s.interval, "next_refresh": self.next_refresh,
                "names": [st.to_dict() for st in self.names.values()], "targets": self.targets.status()}


PLUGIN = DNSPlugin
