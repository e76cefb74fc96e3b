"""The targets (peer URLs) the configured names currently give, and what became of each.

A new target is probed (`GET /info`) before it is reported, so this node never dials itself (it is
usually in its own SRV record) and an address with nothing Beiran behind it is only logged. A target
that no name gives any more is reported vanished at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from beiran_plugins.dns.plugin import DNSPlugin

log = logging.getLogger("beiran.dns")


@dataclass
class Target:
    url: str
    names: list[str] = field(default_factory=list)
    state: str = "probing"  # probing, peer, self, unreachable
    detail: str = ""
    uuid: str | None = None
    since: float = field(default_factory=time.time)
    task: asyncio.Task | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"url": self.url, "names": self.names, "state": self.state, "detail": self.detail,
                "uuid": self.uuid, "since": self.since}


def endpoint_url(ip: str, port: int) -> str:
    return f"http://[{ip}]:{port}" if ":" in ip else f"http://{ip}:{port}"


class Targets:
    def __init__(self, plugin: DNSPlugin) -> None:
        self.plugin = plugin
        self.ctx = plugin.ctx
        self.targets: dict[str, Target] = {}

    def update(self, current: dict[str, list[str]]) -> None:
        """`current`: url -> the names giving it, as of this refresh."""
        for url, names in current.items():
            target = self.targets.get(url)
            if target is None:
                target = self.targets[url] = Target(url)
            target.names = sorted(names)
            if target.state in ("probing", "unreachable") and (target.task is None or target.task.done()):
                target.task = asyncio.ensure_future(self._probe(target))
        for url in [u for u in self.targets if u not in current]:
            self._drop(url)

    def stop(self) -> None:
        for target in self.targets.values():
            if target.task:
                target.task.cancel()

    def status(self) -> list[dict[str, Any]]:
        return [t.to_dict() for t in sorted(self.targets.values(), key=lambda t: t.url)]

    async def _probe(self, target: Target) -> None:
        if target.url == self.ctx.identity.url:
            target.uuid = self.ctx.identity.uuid
            self._set(target, "self", "")
            return
        try:
            info = await self.ctx.peers.fetch_info(target.url, timeout=self.plugin.settings.probe_timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - an unreachable target is logged, retried next refresh
            self._set(target, "unreachable", str(getattr(exc, "message", exc)))
            return
        if self.targets.get(target.url) is not target:
            return  # dropped while probing
        target.uuid = str(info.get("uuid"))[:40]
        if target.uuid == self.ctx.identity.uuid:
            self._set(target, "self", "")
            return
        self._set(target, "peer", f"node {target.uuid}")
        self.ctx.peers.discovered(target.url, via="dns")

    def _drop(self, url: str) -> None:
        target = self.targets.pop(url)
        if target.task:
            target.task.cancel()
        if target.state == "peer":
            log.info("dns: %s (node %s) is no longer in DNS", url, target.uuid)
            self.ctx.peers.vanished(url, via="dns")

    def _set(self, target: Target, state: str, detail: str) -> None:
        if state != target.state:
            level = logging.WARNING if state == "unreachable" else logging.INFO
            log.log(level, "dns: target %s (from %s): %s%s", target.url, ", ".join(target.names), state,
                    f" ({detail})" if detail else "")
            target.since = time.time()
        target.state, target.detail = state, detail
