"""Browse `_beiran._tcp.local.`: resolve each announced node, check its TXT, probe it, report it.

A service becomes a peer only when `GET /info` at one of its addresses answers with the UUID its TXT
claims, so a stray or lying announcement never connects anything. A removed service (or a goodbye
packet) drops the peer at once, unless another announcement still points at the same URL.
Each service's state is logged when it changes, not on every retry.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from zeroconf import ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo

from beiran_plugins.zeroconf.txt import Announced, MalformedService, parse, printable

if TYPE_CHECKING:
    from beiran_plugins.zeroconf.plugin import ZeroconfPlugin

log = logging.getLogger("beiran.zeroconf")
MAX_SERVICES = 1024  # a LAN flooding announcements cannot grow this without bound
RETRY_MAX = 60.0
_QUIET = {"resolving", "other-cluster"}
_GOOD = {"peer", "self"}


@dataclass
class Seen:
    """One announced service instance and what became of it."""

    name: str
    state: str = "resolving"
    detail: str = ""
    uuid: str | None = None
    addresses: list[str] = field(default_factory=list)
    port: int | None = None
    txt: dict[str, Any] = field(default_factory=dict)
    url: str | None = None  # reported to the peer manager while set
    since: float = field(default_factory=time.time)
    task: asyncio.Task | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "state": self.state, "detail": self.detail, "uuid": self.uuid,
                "addresses": self.addresses, "port": self.port, "txt": self.txt, "url": self.url,
                "since": self.since}


def candidate_urls(ann: Announced) -> list[str]:
    """IPv4 first, then routable IPv6; scoped link-local IPv6 cannot be written in a peer URL."""
    v4, v6 = [], []
    for addr in ann.addresses:
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            continue
        if ip.version == 4:
            v4.append(f"http://{ip}:{ann.port}")
        elif not ip.is_link_local:
            v6.append(f"http://[{ip}]:{ann.port}")
    return v4 + v6


def _short(name: str) -> str:
    return repr(name[:80])


class Browser:
    def __init__(self, plugin: ZeroconfPlugin, service_type: str) -> None:
        self.plugin = plugin
        self.ctx = plugin.ctx
        self.type = service_type
        self.seen: dict[str, Seen] = {}
        self.by_url: dict[str, set[str]] = {}
        self._zc: Zeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._full_logged = False

    def start(self, zc: Zeroconf) -> None:
        self._zc = zc
        self._browser = AsyncServiceBrowser(zc, [self.type], handlers=[self._on_change])

    async def stop(self) -> None:
        """Daemon shutdown: stop browsing; peers go down with the daemon, nothing is reported."""
        for seen in self.seen.values():
            if seen.task:
                seen.task.cancel()
        if self._browser is not None:
            await self._browser.async_cancel()
            self._browser = None

    def status(self) -> list[dict[str, Any]]:
        return [s.to_dict() for s in sorted(self.seen.values(), key=lambda s: s.name)]

    # -- events from python-zeroconf -------------------------------------------------------------
    def _on_change(self, zeroconf: Zeroconf, service_type: str, name: str,
                   state_change: ServiceStateChange) -> None:
        try:
            if state_change is ServiceStateChange.Removed:
                self._removed(name)
            else:
                self._track_soon(name)
        except Exception:  # one odd announcement must not break browsing
            log.exception("zeroconf: handling %s of %s failed", state_change, _short(name))

    def _track_soon(self, name: str) -> None:
        seen = self.seen.get(name)
        if seen is None:
            if len(self.seen) >= MAX_SERVICES:
                if not self._full_logged:
                    log.warning("zeroconf: more than %d services announced; ignoring new ones", MAX_SERVICES)
                    self._full_logged = True
                return
            seen = self.seen[name] = Seen(name)
        if seen.task and not seen.task.done():
            seen.task.cancel()
        seen.task = asyncio.ensure_future(self._track(seen))

    def _removed(self, name: str) -> None:
        seen = self.seen.pop(name, None)
        if seen is None:
            return
        if seen.task:
            seen.task.cancel()
        if seen.state == "peer":
            log.info("zeroconf: %s (node %s) is gone", _short(name), seen.uuid)
        self._forget_url(seen)

    # -- resolve, check, probe -------------------------------------------------------------------
    async def _track(self, seen: Seen) -> None:
        try:
            await self._resolve_and_probe(seen)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - logged, the service is left alone
            self._set(seen, "error", f"{type(exc).__name__}: {exc}")

    async def _resolve_and_probe(self, seen: Seen) -> None:
        assert self._zc is not None
        info = AsyncServiceInfo(self.type, seen.name)
        if not await info.async_request(self._zc, self.plugin.settings.resolve_timeout * 1000):
            self._set(seen, "unresolved", "no complete SRV/TXT/address answer")
            return
        props = info.properties or {}
        seen.txt, seen.port = printable(props), info.port
        seen.addresses = info.parsed_scoped_addresses()
        try:
            ann = parse(props, info.port, info.parsed_addresses())
        except MalformedService as exc:
            self._forget_url(seen)
            self._set(seen, "malformed", str(exc))
            return
        known = seen.state == "peer" and seen.uuid == ann.uuid
        seen.uuid = ann.uuid
        if ann.uuid == self.ctx.identity.uuid:
            self._set(seen, "self", "")
            return
        if ann.cluster != self.plugin.settings.cluster:
            self._forget_url(seen)
            self._set(seen, "other-cluster", f"announces cluster {ann.cluster!r}")
            return
        urls = candidate_urls(ann)
        if not urls:
            self._set(seen, "malformed", "no address a peer URL can use")
            return
        if known and seen.url in urls:
            return  # a refresh of what we already know
        delay = 1.0
        while True:
            url, problem = await self._probe(ann, urls)
            if url is not None:
                self._report(seen, url)
                return
            self._forget_url(seen)
            self._set(seen, *problem)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    async def _probe(self, ann: Announced, urls: list[str]) -> tuple[str | None, tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        for url in urls:
            try:
                info = await self.ctx.peers.fetch_info(url, timeout=self.plugin.settings.probe_timeout)
            except Exception as exc:  # noqa: BLE001 - unreachable is an answer here, not a failure
                problems.append(("unreachable", str(getattr(exc, "message", exc))))
                continue
            answered = str(info.get("uuid"))[:40]
            if answered != ann.uuid:
                problems.append(("wrong-node", f"{url} answers as node {answered}, not {ann.uuid}"))
                continue
            return url, ("peer", url)
        problems.sort(key=lambda p: p[0] != "wrong-node")  # a lie is worth reporting over a timeout
        return None, problems[0]

    # -- reporting -------------------------------------------------------------------------------
    def _report(self, seen: Seen, url: str) -> None:
        if seen.url != url:
            self._forget_url(seen)
        seen.url = url
        self.by_url.setdefault(url, set()).add(seen.name)
        self.ctx.peers.discovered(url, via="zeroconf")
        self._set(seen, "peer", url)

    def _forget_url(self, seen: Seen) -> None:
        url, seen.url = seen.url, None
        if url is None:
            return
        names = self.by_url.get(url, set())
        names.discard(seen.name)
        if not names:
            self.by_url.pop(url, None)
            self.ctx.peers.vanished(url, via="zeroconf")

    def _set(self, seen: Seen, state: str, detail: str) -> None:
        if state != seen.state:
            level = (logging.DEBUG if state in _QUIET else logging.INFO if state in _GOOD
                     else logging.WARNING)
            log.log(level, "zeroconf: service %s: %s%s", _short(seen.name), state,
                    f" ({detail})" if detail else "")
            seen.since = time.time()
        seen.state, seen.detail = state, detail
