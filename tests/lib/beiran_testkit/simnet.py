"""A virtual clock and an in-memory network for running many real membership/directory instances
in one process: simulated time jumps from event to event, so simulated minutes of a thousand nodes
take seconds. The protocol code sees only `time()`, `call_later()` and a `send` function."""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from itertools import count
from typing import Any

from beiran.peer.links import LinkPool

#: IPv4 + UDP headers, counted on every datagram so byte rates are what a NIC would carry
DATAGRAM_OVERHEAD = 28
#: IPv4 + TCP headers with timestamps, per message on a stream link
SEGMENT_OVERHEAD = 52
#: a lost segment on a stream link is not lost: it arrives after the minimum retransmit timeout
TCP_RTO = 0.2


class SimTimer:
    __slots__ = ("args", "callback", "cancelled")

    def __init__(self, callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.callback, self.args, self.cancelled = callback, args, False

    def cancel(self) -> None:
        self.cancelled = True


class SimClock:
    """A discrete-event loop: `call_later` queues, `run_until` executes in time order."""

    def __init__(self) -> None:
        self.now = 0.0
        self._q: list[tuple[float, int, SimTimer]] = []
        self._seq = count()
        self.events = 0

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> SimTimer:
        t = SimTimer(callback, args)
        heapq.heappush(self._q, (self.now + max(0.0, delay), next(self._seq), t))
        return t

    def run_until(self, end: float, stop: Callable[[], bool] | None = None) -> None:
        q = self._q
        while q and q[0][0] <= end:
            when, _, t = heapq.heappop(q)
            if t.cancelled:
                continue
            self.now = when
            self.events += 1
            t.callback(*t.args)
            if stop is not None and stop():
                return
        self.now = max(self.now, end)


class Counter:
    __slots__ = ("recv_bytes", "recv_msgs", "sent_bytes", "sent_msgs")

    def __init__(self) -> None:
        self.sent_msgs = self.sent_bytes = self.recv_msgs = self.recv_bytes = 0


class SimNet:
    """Datagrams between addresses: one-way latency with jitter, independent loss, down hosts."""

    def __init__(self, clock: SimClock, latency: float = 0.0005, jitter: float = 0.5, loss: float = 0.0,
                 rng: random.Random | None = None, overhead: int = DATAGRAM_OVERHEAD) -> None:
        self.clock, self.latency, self.jitter, self.loss = clock, latency, jitter, loss
        self.rng = rng or random.Random(1)
        self.overhead = overhead
        self.handlers: dict[str, Callable[[str, bytes], None]] = {}
        self.down: set[str] = set()
        self.counters: dict[str, Counter] = {}

    def attach(self, addr: str, handler: Callable[[str, bytes], None]) -> Callable[[str, bytes], None]:
        """Register `addr`'s receive handler; returns its send function."""
        self.handlers[addr] = handler
        self.counters[addr] = Counter()
        return lambda dst, data: self.send(addr, dst, data)

    def delay(self) -> float:
        return self.latency * (1.0 + self.jitter * self.rng.random())

    def send(self, src: str, dst: str, data: bytes, extra: float = 0.0) -> None:
        if src in self.down:
            return
        c = self.counters[src]
        c.sent_msgs += 1
        c.sent_bytes += len(data) + self.overhead
        if self.loss and self.rng.random() < self.loss:
            return
        self.clock.call_later(self.delay() + extra, self._deliver, src, dst, data)

    def _deliver(self, src: str, dst: str, data: bytes) -> None:
        handler = self.handlers.get(dst)
        if handler is None or dst in self.down:
            return
        c = self.counters[dst]
        c.recv_msgs += 1
        c.recv_bytes += len(data) + self.overhead
        handler(src, data)

    def reset_counters(self) -> None:
        for c in self.counters.values():
            c.sent_msgs = c.sent_bytes = c.recv_msgs = c.recv_bytes = 0


class SimLinks(SimNet):
    """Stream links through each node's bounded `LinkPool`: a message to a node without an open
    link first pays a connection setup (two round trips: TCP, then the WebSocket upgrade), a lost
    segment arrives one retransmit timeout late, and a link closed at one end is closed at both."""

    def __init__(self, clock: SimClock, max_open: int = 64, **kw: Any) -> None:
        super().__init__(clock, overhead=SEGMENT_OVERHEAD, **kw)
        self.max_open = max_open
        self.pools: dict[str, LinkPool[bool]] = {}
        self.peak = 0

    def attach(self, addr: str, handler: Callable[[str, bytes], None]) -> Callable[[str, bytes], None]:
        self.pools[addr] = LinkPool(lambda node: True, lambda node, _link, me=addr: self._closed(me, node),
                                    self.max_open)
        return super().attach(addr, handler)

    def _closed(self, me: str, node: str) -> None:
        other = self.pools.get(node)
        if other is not None and me in other:
            other.drop(me)

    def send(self, src: str, dst: str, data: bytes, extra: float = 0.0) -> None:
        if src in self.down:
            return
        mine, theirs = self.pools[src], self.pools.get(dst)
        setup = 0.0
        if dst not in mine or theirs is None or src not in theirs:
            setup = 4 * self.delay()
            if dst not in self.down and theirs is not None:
                theirs.get(src)
            mine.get(dst)
        else:
            mine.get(dst)
            theirs.get(src)
        self.peak = max(self.peak, len(mine), len(theirs) if theirs is not None else 0)
        c = self.counters[src]
        c.sent_msgs += 1
        c.sent_bytes += len(data) + self.overhead
        if self.loss and self.rng.random() < self.loss:
            setup += TCP_RTO
        self.clock.call_later(setup + self.delay() + extra, self._deliver, src, dst, data)

    def host_down(self, addr: str) -> None:
        """A crashed host: its links die with it (the peers see a reset)."""
        self.down.add(addr)
        pool = self.pools.get(addr)
        if pool is not None:
            for node in pool.nodes():
                pool.drop(node)
