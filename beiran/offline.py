"""Metadata answers while an upstream is down: which digest a tag names, which manifest a package
version has. One rule for every plugin, because a wrong answer here is served to clients as truth.

1. A node's own last answer from its upstream comes first (the plugin checks it before asking).
2. Otherwise reachable peers are asked (one per host), and a value is used only when at least `quorum`
   of them (never fewer than 2) and a strict majority of those that answered for that key returned it.
3. A peer's clocks and `updated` values are never compared: "newest" is what an attacker would claim.

Every answer given this way is one WARNING line (what, the value, which peers agreed) and one
`beiran_offline_answers_total{plugin,outcome}` sample, and plugins put `header_value()` in an
`X-Beiran-Offline` response header.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar
from urllib.parse import urlsplit

from beiran.errors import BeiranError
from beiran.httpstream import stream_request

if TYPE_CHECKING:
    from beiran.context import DaemonContext

log = logging.getLogger("beiran.offline")
T = TypeVar("T")
HEADER = "X-Beiran-Offline"
#: outcomes counted in beiran_offline_answers_total
OWN, AGREED, REFUSED, UNKNOWN = "own", "agreed", "refused", "unknown"
MIN_QUORUM = 2
#: peer requests in flight per plugin: an outage with many clients asking must not open a connection
#: per client per peer at once
PARALLEL_ASKS = 16


@dataclass(frozen=True)
class Verdict:
    """What the peers said about one key: the agreed value (None when there is none)."""

    key: str
    value: str | None
    agreed: tuple[str, ...]  # peers that returned `value`
    answered: int  # peers that returned any value for the key
    counts: tuple[tuple[str, int], ...] = ()  # every value seen, most common first


def agree(votes: Mapping[str, Mapping[str, str]], quorum: int) -> dict[str, Verdict]:
    """Per key, the value returned by >= quorum peers and by a strict majority of those that
    answered for the key. `votes` is peer -> (key -> value)."""
    quorum = max(quorum, MIN_QUORUM)
    by_key: dict[str, dict[str, list[str]]] = {}
    for peer, answer in votes.items():
        for key, value in answer.items():
            by_key.setdefault(key, {}).setdefault(value, []).append(peer)
    out = {}
    for key, values in by_key.items():
        answered = sum(len(p) for p in values.values())
        ranked = sorted(values.items(), key=lambda kv: (-len(kv[1]), kv[0]))
        best, peers = ranked[0]
        ok = len(peers) >= quorum and 2 * len(peers) > answered
        out[key] = Verdict(key, best if ok else None, tuple(sorted(peers)) if ok else (), answered,
                           tuple((v, len(p)) for v, p in ranked))
    return out


def header_value(outcome: str, peers: tuple[str, ...] | list[str] = ()) -> str:
    """`own` or `agreed; peers=<uuid8>,<uuid8>` for the X-Beiran-Offline header."""
    if outcome == AGREED:
        return f"agreed; peers={','.join(p[:8] for p in sorted(peers))}"
    return outcome


class OfflineAnswers:
    """Asks peers a plugin's metadata question and reports the outcome, for one plugin."""

    def __init__(self, ctx: DaemonContext, plugin: str) -> None:
        self.ctx = ctx
        self.plugin = plugin
        self._slots = asyncio.Semaphore(PARALLEL_ASKS)

    @property
    def quorum(self) -> int:
        return max(self.ctx.config.offline.quorum, MIN_QUORUM)

    async def peers(self) -> list[str]:
        """Reachable peers running this plugin (websocket peers, or members above full_mesh_max),
        one per host (several node UUIDs on one machine are one voice), at most `offline.max_peers`
        of them (a random choice, so a fixed set of nodes cannot arrange to be the ones asked)."""
        limit = max(self.ctx.config.offline.max_peers, 1)
        hosts: dict[str, list[str]] = {}
        for node in await self.ctx.peers.reachable():
            host = urlsplit(self.ctx.peers.url_of(node) or "").hostname
            if host:
                hosts.setdefault(host, []).append(node)
        order = list(hosts)
        random.shuffle(order)
        nodes = [(h, n) for h in order for n in hosts[h]]
        by_host: dict[str, str] = {}
        for i in range(0, len(nodes), limit):  # plugin lists may cost a request: learn few at a time
            chunk = nodes[i:i + limit]
            names = await asyncio.gather(*(self.ctx.peers.plugins_of(n) for _, n in chunk))
            for (host, node), plugins in zip(chunk, names, strict=True):
                if plugins is not None and self.plugin in plugins:
                    by_host.setdefault(host, node)
            if len(by_host) >= limit:
                break
        return list(by_host.values())[:limit]

    async def ask(self, path: str, parse: Callable[[bytes], T], limit: int) -> dict[str, T]:
        """GET `path` from each chosen peer (no redirects, at most `limit` bytes, bounded time);
        peer -> parse(body) for the answers that were 200 and parsed."""
        nodes = await self.peers()
        answers = await asyncio.gather(*(self._ask_one(n, path, parse, limit) for n in nodes))
        return {n: a.value for n, a in zip(nodes, answers, strict=True) if a is not None}

    async def _ask_one(self, node: str, path: str, parse: Callable[[bytes], T], limit: int) -> _Got[T] | None:
        base = self.ctx.peers.url_of(node)
        if not base:
            return None
        timeout = self.ctx.config.offline.timeout
        headers = self.ctx.auth.headers("GET", path)  # the signature covers the path and its query

        async def get() -> bytes | None:
            async with stream_request(base + path, headers, connect_timeout=timeout, max_redirects=0) as resp:
                if resp.code != 200:
                    return None
                return await resp.read_all(limit, idle_timeout=timeout)
        try:
            async with self._slots:
                body = await asyncio.wait_for(get(), timeout * 2)
            if body is None:
                return None
            return _Got(await self.ctx.run_blocking(parse, body))
        except (BeiranError, OSError, ValueError, TypeError, TimeoutError) as exc:
            log.info("%s: peer %s gave no usable answer for %s: %s", self.plugin, node[:8], path[:200], exc)
            return None

    def report(self, outcome: str, what: str, value: str | None = None, peers: tuple[str, ...] | list[str] = (),
               detail: str = "") -> None:
        """The one WARNING line and the metric sample for an answer given (or refused) offline."""
        metrics = self.ctx.metrics
        if metrics is not None:
            metrics.offline_answers.labels(plugin=self.plugin, outcome=outcome).inc()
        who = ", ".join(p[:8] for p in sorted(peers))
        if outcome == OWN:
            msg = f"answering {what} with {value}: this node's own last answer from the upstream"
        elif outcome == AGREED:
            msg = f"answering {what} with {value}: agreed by {len(peers)} peers ({who})"
        elif outcome == REFUSED:
            msg = f"not answering {what}: peers do not agree (need {self.quorum} and a majority)"
        else:
            msg = f"not answering {what}: no peer knows it"
        log.warning("offline answer (%s): %s%s", self.plugin, msg, f"; {detail}" if detail else "")


@dataclass
class _Got(Generic[T]):
    value: T
