"""What one peer transfer must keep to: a floor rate, and a bound on the bytes it may send.

Why: `peer_timeout` bounds the time between two bytes, so a peer sending a byte now and then
(a drip) held a receive thread and the fetch as long as it liked. Each transfer, its head
included, must average `fetch.peer_min_rate` over every `peer_timeout` window; one that falls
behind is cut from outside the blocking reads (its socket shut down by a timer on the event loop,
which wakes the receive thread), and the fetch goes on to the next source with that peer's failure.
The timer is armed and cancelled on the loop: a transfer costs no extra thread hop nor syscall.

A blob whose size nobody this node trusts gave (none came with the request, or only a third peer
announced one) has no room made for it: what a peer may write of it is bounded here by
`fetch.max_unknown_size`, `store.max_size` and the free disk at the last look, and a peer that
claims more (its Content-Length, or the announced size it would fill) is given up before a byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from beiran.errors import UpstreamError

if TYPE_CHECKING:
    from beiran.context import DaemonContext
    from beiran.fetch.job import FetchJob


class Pace:
    """One transfer's progress rule and byte bound. Made and closed on the event loop; the
    receive thread calls `begin`, `attach`, `end` and reads `limit`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, floor: float, window: float,
                 limit: int | None = None) -> None:
        self.floor, self.window = floor, max(window, 0.05)
        #: the end offset in the blob this peer's bytes may not pass (None: the blob's size was
        #: given by a caller this node trusts, and room was made for it)
        self.limit = limit
        self.began = 0.0  # when the receive thread took the transfer (its queue wait is not the peer's)
        self.expired = False
        self.conn: http.client.HTTPConnection | None = None
        self.resp: http.client.HTTPResponse | None = None
        self._over = False
        self._lock = threading.Lock()
        self._mark: tuple[float, int] | None = None  # (start, bytes by then) of the current window
        self._loop = loop
        self._timer = loop.call_later(self.window, self._check) if floor > 0 else None

    # -- receive thread ------------------------------------------------------------------------
    def begin(self) -> None:
        self.began = time.monotonic()

    def attach(self, conn: http.client.HTTPConnection) -> None:
        """The connection the transfer runs on (a retry may replace it): the one to cut."""
        with self._lock:
            self.conn = conn
            if self.expired:
                raise UpstreamError("the transfer fell below fetch.peer_min_rate")

    def end(self) -> bool:
        """The transfer is over (nothing is cut after this); False when it was cut."""
        with self._lock:
            self._over = True
            return not self.expired

    def received(self) -> int:
        resp = self.resp
        return getattr(resp, "received", 0) if resp is not None else 0

    def error(self, node: str) -> UpstreamError:
        return UpstreamError(f"peer {node[:8]} sent {self.received()} bytes in "
                             f"{time.monotonic() - (self.began or time.monotonic()):.1f}s, below "
                             f"fetch.peer_min_rate ({self.floor:.0f} bytes/s); given up")

    # -- event loop ----------------------------------------------------------------------------
    def _check(self) -> None:
        if self._over:
            return
        now = time.monotonic()
        if self.expired:  # cut again: a connection attached since (a retry) may be waiting
            self._cut()
            self._timer = self._loop.call_later(min(self.window, 1.0), self._check)
            return
        if not self.began:  # still queued for a receive thread
            self._timer = self._loop.call_later(self.window, self._check)
            return
        start, before = self._mark or (self.began, 0)
        due = start + self.window - now
        if due > 0:
            self._timer = self._loop.call_later(due, self._check)
            return
        got = self.received()
        if got - before < self.floor * (now - start):
            self.expired = True
            self._cut()
            self._timer = self._loop.call_later(min(self.window, 1.0), self._check)
            return
        self._mark = (now, got)
        self._timer = self._loop.call_later(self.window, self._check)

    def _cut(self) -> None:
        """Shut the socket down: a receive thread blocked on it wakes to an end of stream."""
        with self._lock:
            if self._over:
                return
            self.expired = True
            sock = self.conn.sock if self.conn is not None else None
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        """On the loop, when the awaiting side is done: a transfer still running (its caller was
        cancelled) is cut, so the receive thread is freed."""
        if self._timer is not None:
            self._timer.cancel()
        if not self._over:
            self._cut()


@contextlib.asynccontextmanager
async def paced(node: str, floor: float, window: float) -> AsyncIterator[Callable[[int], None]]:
    """The same rule for a transfer read on the event loop (a peer named by an https:// URL):
    the body (and the head before it) must bring `floor * window` bytes within each window, a
    window starting again as soon as it has; the caller reports each chunk's size to the function
    this yields. A transfer that falls behind is cancelled where it waits."""
    window = max(window, 0.05)
    loop = asyncio.get_running_loop()
    quota, got = floor * window, 0
    try:
        async with asyncio.timeout(window if floor > 0 else None) as budget:
            def received(n: int) -> None:
                nonlocal got
                got += n
                if floor > 0 and got >= quota:
                    got = 0
                    budget.reschedule(loop.time() + window)
            yield received
    except TimeoutError:
        raise UpstreamError(f"peer {node[:8]} sent less than fetch.peer_min_rate ({floor:.0f} bytes/s) "
                            f"over {window:.1f}s; given up") from None


def unverified_limit(ctx: DaemonContext, job: FetchJob) -> int | None:
    """The end offset a peer's bytes of this blob may not pass, when no room was made for its
    size (None when it was: the size came with the request and was checked then). Raises when
    the size a peer announced is already more than that (no peer could fill it here)."""
    if job.size_claimed:
        return None
    limit = ctx.config.fetch.max_unknown_size or (1 << 62)
    cap = ctx.config.store.max_size
    if cap is not None:
        limit = min(limit, cap)
    free = ctx.store.free_seen()
    if free is not None:
        limit = min(limit, free - ctx.config.store.reserve_free)
    limit = max(limit, 0)
    if job.size is not None and job.size > limit:
        raise UpstreamError(f"blob {job.digest[:19]}: a peer's claim of {job.size} bytes is more than this "
                            f"node takes unverified ({limit}: fetch.max_unknown_size, store.max_size, free disk)")
    return limit
