"""Kept-alive connections to origins (registries, archives, npm upstreams, `[origins]`), one pool
per event loop, for `httpstream` only: a packument, a manifest or a small .deb costs less than a TCP
(and TLS, and proxy CONNECT) handshake, so consecutive origin requests reuse one connection.

A connection is keyed by everything that made it: scheme, host, port, the upstream proxy route
(proxy address and credentials) and the TLS context that verified the origin's certificate. A
request therefore only ever rides a connection that was opened and verified exactly as a fresh one
for it would be. Peer traffic never enters this pool (peers have their own, beiran/fetch/peer_pool.py,
and never go through upstream proxies).

Bounded: at most PER_ROUTE idle connections per key and MAX_IDLE in all; an idle one is closed after
IDLE_SECONDS or the origin's own `Keep-Alive: timeout=` (less a second), whichever is shorter. One the
origin closed while idle is seen before reuse (readable socket); the race that remains is covered
by the caller's single retry of idempotent requests (beiran/httpstream.py).
"""

from __future__ import annotations

import asyncio
import re
import select
import ssl
import time
import weakref
from collections import OrderedDict, deque
from dataclasses import dataclass

from tornado.iostream import IOStream

from beiran import proxies

PER_ROUTE = 8
MAX_IDLE = 64
IDLE_SECONDS = 30.0
_KEEP_ALIVE_TIMEOUT = re.compile(r"(?:^|[,;\s])timeout\s*=\s*(\d+)", re.IGNORECASE)


@dataclass(frozen=True)
class Route:
    """What a connection was opened for. `tls` compares by identity: a connection verified with one
    context (a plugin's `ca_file`) never serves a request that asked for another."""

    scheme: str
    host: str
    port: int
    proxy: proxies.Proxy | None
    tls: ssl.SSLContext | None


def keep_for(keep_alive_header: str | None) -> float:
    """How long an idle connection may be kept, from the origin's `Keep-Alive` header if it sent one."""
    if keep_alive_header:
        m = _KEEP_ALIVE_TIMEOUT.search(keep_alive_header)
        if m:
            return min(IDLE_SECONDS, float(m.group(1)) - 1.0)
    return IDLE_SECONDS


class OriginPool:
    def __init__(self, per_route: int = PER_ROUTE, max_idle: int = MAX_IDLE) -> None:
        self.per_route = per_route
        self.max_idle = max_idle
        self._idle: OrderedDict[Route, deque[tuple[IOStream, float]]] = OrderedDict()
        self._count = 0
        self._sweeper: asyncio.TimerHandle | None = None
        self.opened = 0
        self.reused = 0

    def take(self, route: Route) -> IOStream | None:
        """The most recently used idle connection for `route` that still looks open, or None."""
        idle = self._idle.get(route)
        now = time.monotonic()
        while idle:
            stream, deadline = idle.pop()
            self._count -= 1
            if now < deadline and _usable(stream):
                if not idle:
                    del self._idle[route]
                self.reused += 1
                return stream
            stream.close()
        self._idle.pop(route, None)
        return None

    def give(self, route: Route, stream: IOStream, keep_seconds: float) -> None:
        """Keep a connection whose last response was read to its end and that may carry another."""
        if keep_seconds <= 0 or stream.closed() or not _usable(stream):
            stream.close()
            return
        idle = self._idle.setdefault(route, deque())
        self._idle.move_to_end(route)
        if len(idle) >= self.per_route:
            idle.popleft()[0].close()
            self._count -= 1
        idle.append((stream, time.monotonic() + keep_seconds))
        self._count += 1
        while self._count > self.max_idle:  # the route used least recently gives one up
            oldest_route, oldest = next(iter(self._idle.items()))
            oldest.popleft()[0].close()
            self._count -= 1
            if not oldest:
                del self._idle[oldest_route]
        self._schedule_sweep(keep_seconds)

    def idle_count(self) -> int:
        return self._count

    def close(self) -> None:
        for idle in self._idle.values():
            for stream, _ in idle:
                stream.close()
        self._idle.clear()
        self._count = 0
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    def _schedule_sweep(self, after: float) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(after + 0.5, self._sweep)

    def _sweep(self) -> None:
        """Close the connections past their idle time (they would only hold the origin's sockets)."""
        self._sweeper = None
        now = time.monotonic()
        for route in list(self._idle):
            idle = self._idle[route]
            keep = deque(item for item in idle if item[1] > now and not item[0].closed())
            for stream, deadline in idle:
                if deadline <= now or stream.closed():
                    stream.close()
            self._count -= len(idle) - len(keep)
            if keep:
                self._idle[route] = keep
            else:
                del self._idle[route]
        if self._idle:
            soonest = min(d for idle in self._idle.values() for _, d in idle)
            self._schedule_sweep(max(0.0, soonest - now))


def _usable(stream: IOStream) -> bool:
    """An idle kept-alive connection has nothing to read: readable means the origin closed it (or
    sent bytes nobody asked for), and bytes already buffered mean the same."""
    if stream.closed() or stream._read_buffer_size:  # tornado has no public accessor
        return False
    sock = stream.socket
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return False
    try:
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN | select.POLLERR | select.POLLHUP)
        return not poller.poll(0)
    except (OSError, ValueError):
        return False


_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, OriginPool] = weakref.WeakKeyDictionary()


def totals() -> tuple[int, int, int]:
    """Connections opened and reused since start, and idle now, over every event loop's pool (the
    daemon runs one loop; `/metrics` reads these at scrape time)."""
    pools = list(_pools.values())
    return (sum(p.opened for p in pools), sum(p.reused for p in pools), sum(p.idle_count() for p in pools))


def pool() -> OriginPool:
    """This event loop's pool (a connection belongs to the loop that opened it)."""
    loop = asyncio.get_running_loop()
    p = _pools.get(loop)
    if p is None:
        p = _pools[loop] = OriginPool()
    return p
