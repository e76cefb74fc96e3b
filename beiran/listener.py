"""The HTTP server every listener of the daemon runs on: connection caps, timeouts, and an accept
loop that survives running out of file descriptors.

Tornado's accept handler raises on EMFILE; the listening socket stays readable, so the loop calls
it again at once and logs each failure (millions of lines a minute). Here accepting pauses with a
growing back-off and the condition is logged once per interval with a count. Connections beyond the
per-address or total cap are closed as soon as they are accepted, before any buffer is allocated.
"""

from __future__ import annotations

import errno
import logging
import resource
import socket
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop
from tornado.iostream import IOStream

from beiran.counts import InUse

if TYPE_CHECKING:
    from beiran.config import LimitsConfig

log = logging.getLogger("beiran.listener")
#: accept() errors that mean "out of descriptors or memory": back off instead of spinning
_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
LOG_INTERVAL = 60.0
BACKOFF_MIN, BACKOFF_MAX = 0.05, 2.0
ACCEPT_BATCH = 128


def default_max_connections() -> int:
    """3/4 of the open-file limit: the rest stays for blobs, the database and outgoing fetches."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(64, soft * 3 // 4) if soft != resource.RLIM_INFINITY else 1 << 16


class _CountedStream(IOStream):
    """Tells its server when it closes (every close path goes through `close`)."""

    def __init__(self, sock: socket.socket, on_close: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(sock, **kwargs)
        self._on_close: Callable[[], None] | None = on_close

    def close(self, exc_info: Any = False) -> None:
        super().close(exc_info)
        if self._on_close is not None:
            release, self._on_close = self._on_close, None
            release()


class GuardedHTTPServer(HTTPServer):
    def initialize(self, *args: Any, limits: LimitsConfig | None = None, per_address: bool = True,
                   on_refused: Callable[[str], None] | None = None, **kwargs: Any) -> None:
        if limits is not None:
            kwargs.setdefault("idle_connection_timeout", limits.header_timeout)
            kwargs.setdefault("body_timeout", limits.body_timeout)
            kwargs.setdefault("max_header_size", limits.max_header_size)
        super().initialize(*args, **kwargs)
        self.per_ip_cap = (limits.connections_per_ip if limits and per_address else 0) or 0
        self.total_cap = (limits.max_connections if limits else 0) or default_max_connections()
        self.open_by_ip: InUse[str] = InUse()
        self.open_total = 0
        self.accepted = self.refused = 0
        self.on_refused = on_refused
        self._exhausted = 0  # accept() failures since the last log line
        self._logged_at = 0.0
        self._refused_unlogged = 0
        self._refused_logged_at = 0.0
        self._backoff = BACKOFF_MIN

    # -- accepting -------------------------------------------------------------------------------
    def add_sockets(self, sockets: Iterable[socket.socket]) -> None:
        for sock in sockets:
            self._sockets[sock.fileno()] = sock
            self._handlers[sock.fileno()] = self._accept_on(sock)

    def _accept_on(self, sock: socket.socket) -> Callable[[], None]:
        loop = IOLoop.current()
        state: dict[str, Any] = {"removed": False, "paused": None}

        def on_readable(fd: Any, events: int) -> None:
            for _ in range(ACCEPT_BATCH):
                if state["removed"]:
                    return
                try:
                    conn, address = sock.accept()
                except BlockingIOError:
                    return
                except ConnectionAbortedError:
                    continue
                except OSError as exc:
                    if exc.errno not in _EXHAUSTED:
                        raise
                    self._note_exhausted(exc)
                    loop.remove_handler(sock)
                    state["paused"] = loop.call_later(self._backoff, resume)
                    self._backoff = min(self._backoff * 2, BACKOFF_MAX)
                    return
                self._backoff = BACKOFF_MIN
                self._accepted(conn, address)

        def resume() -> None:
            state["paused"] = None
            if not state["removed"]:
                loop.add_handler(sock, on_readable, IOLoop.READ)

        def remove() -> None:
            if state["paused"] is not None:
                loop.remove_timeout(state["paused"])
            else:
                loop.remove_handler(sock)
            state["removed"] = True

        loop.add_handler(sock, on_readable, IOLoop.READ)
        return remove

    def _note_exhausted(self, exc: OSError) -> None:
        self._exhausted += 1
        now = time.monotonic()
        if now - self._logged_at >= LOG_INTERVAL:
            log.warning("cannot accept connections: %s (%d times since the last report; %d open); "
                        "pausing accepts, raise the open-file limit (LimitNOFILE) or lower "
                        "limits.max_connections", exc.strerror, self._exhausted, self.open_total)
            self._logged_at, self._exhausted = now, 0

    def _accepted(self, conn: socket.socket, address: Any) -> None:
        ip = address[0] if isinstance(address, tuple) else ""
        held = self.open_by_ip.get(ip, 0)
        if self.open_total >= self.total_cap or (self.per_ip_cap and held >= self.per_ip_cap):
            self.refused += 1
            conn.close()
            if self.on_refused is not None:
                self.on_refused(ip)
            self._refused_unlogged += 1
            now = time.monotonic()
            if now - self._refused_logged_at >= LOG_INTERVAL:
                log.warning("refusing connections (last from %s, which has %d open; %d open in all): "
                            "limits.connections_per_ip = %d, limits.max_connections = %d; %d refused "
                            "since the last report", ip, held, self.open_total, self.per_ip_cap,
                            self.total_cap, self._refused_unlogged)
                self._refused_logged_at, self._refused_unlogged = now, 0
            return
        self.accepted += 1
        self.open_total += 1
        self.open_by_ip.add(ip)

        def release() -> None:
            self.open_total -= 1
            self.open_by_ip.done(ip)
        try:
            stream = _CountedStream(conn, release, max_buffer_size=self.max_buffer_size,
                                    read_chunk_size=self.read_chunk_size)
        except Exception:
            release()
            conn.close()
            raise
        self.handle_stream(stream, address)
