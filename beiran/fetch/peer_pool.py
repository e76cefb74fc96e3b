"""Kept-alive HTTP connections to peers, for the receive threads: a blob of a few hundred KB costs
less than a TCP handshake plus a thread's first request, so small blobs (.debs, npm tarballs, image
config blobs) reuse connections. Bounded per peer; a connection the peer closed meanwhile is found
before it is used (a zero-timeout poll), and one that fails before any response byte is retried once
on a fresh connection by the caller."""

from __future__ import annotations

import http.client
import select
import threading
import time
from collections import deque

from beiran.fetch.peer_response import PeerHTTPConnection

#: idle connections kept per peer address (more in flight is fine; the extra ones are closed after)
PER_PEER = 8
#: an idle connection older than this is closed rather than reused (the daemon's server drops idle
#: connections after 300 s)
IDLE_SECONDS = 60.0


class PeerConnectionPool:
    def __init__(self, per_peer: int = PER_PEER, idle_seconds: float = IDLE_SECONDS) -> None:
        self.per_peer = per_peer
        self.idle_seconds = idle_seconds
        self._idle: dict[tuple[str, int], deque[tuple[http.client.HTTPConnection, float]]] = {}
        self._lock = threading.Lock()
        self.opened = 0
        self.reused = 0

    def get(self, host: str, port: int, timeout: float) -> tuple[http.client.HTTPConnection, bool]:
        """(connection, whether it was kept from an earlier request)."""
        now = time.monotonic()
        while True:
            with self._lock:
                idle = self._idle.get((host, port))
                item = idle.pop() if idle else None
            if item is None:
                break
            conn, since = item
            if now - since < self.idle_seconds and _usable(conn):
                conn.timeout = timeout
                if conn.sock is not None:
                    conn.sock.settimeout(timeout)
                self.reused += 1
                return conn, True
            conn.close()
        self.opened += 1
        return PeerHTTPConnection(host, port, timeout=timeout), False

    def put(self, host: str, port: int, conn: http.client.HTTPConnection) -> None:
        """Return a connection whose response was read to its end and not marked to close."""
        if conn.sock is None:
            return
        with self._lock:
            idle = self._idle.setdefault((host, port), deque())
            if len(idle) < self.per_peer:
                idle.append((conn, time.monotonic()))
                return
        conn.close()

    def drop(self, host: str, port: int) -> None:
        """Close the idle connections to one peer (its link was evicted, or it died)."""
        with self._lock:
            idle = self._idle.pop((host, port), None)
        for conn, _ in idle or ():
            conn.close()

    def idle_count(self) -> int:
        with self._lock:
            return sum(len(idle) for idle in self._idle.values())

    def close(self) -> None:
        with self._lock:
            items = [c for idle in self._idle.values() for c, _ in idle]
            self._idle.clear()
        for conn in items:
            conn.close()


def _usable(conn: http.client.HTTPConnection) -> bool:
    """An idle keep-alive socket must have nothing to read: readable means the peer closed it (or
    sent bytes nobody asked for)."""
    sock = conn.sock
    if sock is None:
        return False
    try:
        poller = select.poll()
        poller.register(sock, select.POLLIN | select.POLLERR | select.POLLHUP)
        return not poller.poll(0)
    except (OSError, ValueError):
        return False
