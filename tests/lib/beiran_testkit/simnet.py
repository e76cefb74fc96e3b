"""A virtual clock and an in-memory network for running many real membership/directory instances
in one process: simulated time jumps from event to event, so simulated minutes of a thousand nodes
take seconds. The protocol code sees only `time()`, `call_later()` and a `send` function."""

from __future__ import annotations

import random
from collections.abc import Callable
from heapq import heappop, heappush
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
        heappush(self._q, (self.now + delay if delay > 0.0 else self.now, next(self._seq), t))
        return t

    def run_until(self, end: float, stop: Callable[[], bool] | None = None) -> None:
        q, pop, events = self._q, heappop, 0
        try:
            while q and q[0][0] <= end:
                when, _, t = pop(q)
                if t.cancelled:
                    continue
                self.now = when
                events += 1
                t.callback(*t.args)
                if stop is not None and stop():
                    return
            self.now = max(self.now, end)
        finally:
            self.events += events


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

    def host_down(self, addr: str) -> None:
        """A crashed host: nothing more from or to it."""
        self.down.add(addr)

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
        super().host_down(addr)
        pool = self.pools.get(addr)
        if pool is not None:
            for node in pool.nodes():
                pool.drop(node)


class SimCluster:
    """Real `Membership` + `Directory` nodes on one virtual clock and in-memory network, for tests."""

    def __init__(self, n: int, loss: float = 0.0, seed: int = 1, latency: float = 0.0005,
                 swim: Any = None, bootstrap: bool = True) -> None:
        from beiran.peer.directory import Directory, Ranker
        from beiran.peer.membership import Membership

        self._Membership, self._Directory = Membership, Directory
        self.rng = random.Random(seed)
        self.clock = SimClock()
        self.net = SimNet(self.clock, latency, loss=loss, rng=random.Random(seed + 1))
        self.links = SimLinks(self.clock, latency=latency, loss=loss, rng=random.Random(seed + 2))
        self.swim = swim
        self.ranker = Ranker(3)
        self.members: list[Any] = []
        self.dirs: list[Any] = []
        self.crashed: set[int] = set()
        self.index: dict[str, int] = {}  # member id -> its latest live process
        for _ in range(n):
            self._make()
        if bootstrap:
            from beiran.peer.membership import SharedStart

            start = SharedStart([(m.id, m.addr) for m in self.members], self.clock.now)
            for m in self.members:
                m.adopt(start)
                m.start()

    def _make(self, node_id: str | None = None) -> int:
        i = len(self.members)
        node_id = node_id or f"node-{i:04d}-{self.rng.getrandbits(32):08x}"
        addr = f"10.0.{i // 250}.{i % 250}:7777"
        box: list[Any] = []
        send = self.net.attach(addr, lambda src, data: box[0].on_message(src, data))
        m = self._Membership(node_id, addr, send, self.clock, self.swim, rng=random.Random(self.rng.random()))
        dbox: list[Any] = []
        dsend = self.links.attach(f"{node_id}#{i}", lambda src, data: dbox[0].on_message(src.split("#")[0], data))
        d = self._Directory(m, lambda dst, data, me=i: self._dir_send(me, dst, data), self.clock,
                            ranker=self.ranker, rng=random.Random(self.rng.random()))
        box.append(m)
        dbox.append(d)
        self.members.append(m)
        self.dirs.append(d)
        self.index[node_id] = i
        del dsend
        return i

    def _dir_send(self, me: int, dst: str, data: bytes) -> None:
        target = self.index.get(dst)
        if target is not None and target not in self.crashed:
            self.links.send(f"{self.members[me].id}#{me}", f"{dst}#{target}", data)

    def join(self, seed: int = 0, node_id: str | None = None) -> int:
        """A new node (or a restarted one, same id) joining through member `seed`."""
        i = self._make(node_id)
        self.members[i].start(seeds=[self.members[seed].addr])
        return i

    def crash(self, i: int) -> None:
        self.crashed.add(i)
        m = self.members[i]
        self.net.down.add(m.addr)
        self.links.host_down(f"{m.id}#{i}")
        m.stop()

    def live(self) -> list[int]:
        return [i for i in range(len(self.members)) if i not in self.crashed]

    def run(self, seconds: float) -> None:
        self.clock.run_until(self.clock.now + seconds)

    def run_until(self, cond: Any, limit: float, step: float = 0.1) -> float | None:
        """Simulated seconds until `cond()` holds, or None when it did not within `limit`."""
        start = self.clock.now
        while self.clock.now - start < limit:
            if cond():
                return self.clock.now - start
            self.run(step)
        return self.clock.now - start if cond() else None
