"""Requests apt has already pipelined on a connection, so their .debs can download meanwhile.

apt keeps up to `Acquire::http::Pipeline-Depth` (10) requests in flight on one connection; Tornado
reads the next one only after the current response is complete, so a proxy whose responses come
from peers would fetch strictly one .deb after another while the rest wait in the buffer. Reading
the waiting request lines (without consuming them) lets their cluster fetches start at once.
"""

from __future__ import annotations

import socket
import weakref
from typing import Any

#: how much of a connection's buffer to look at (10 pipelined requests are a few KB)
PEEK_BYTES = 64 << 10

_seen: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()


def waiting_uris(connection: Any) -> list[str]:
    """Request URIs of the GETs queued behind the current one, each returned once per connection."""
    stream = getattr(connection, "stream", None)
    if stream is None:
        return []
    text = (_buffered(stream) + _peek(stream)).decode("latin-1")
    if not text:
        return []
    try:
        seen = _seen.setdefault(stream, set())
    except TypeError:  # not weak-referenceable
        return []
    uris = []
    for line in text.split("\r\n"):
        parts = line.split(" ")
        if len(parts) == 3 and parts[0] == "GET" and parts[2].startswith("HTTP/") and parts[1] not in seen:
            seen.add(parts[1])
            uris.append(parts[1])
    if len(seen) > 1000:  # a long-lived connection: forget the old ones
        seen.clear()
        seen.update(uris)
    return uris


def _buffered(stream: Any) -> bytes:
    """What Tornado has read from the socket but not parsed yet. Its buffer is not a public API:
    should its shape change, this is empty, and only the head start is lost."""
    buf = getattr(stream, "_read_buffer", None)
    size = getattr(stream, "_read_buffer_size", None)
    if not isinstance(buf, (bytes, bytearray)) or not isinstance(size, int) or size <= 0:
        return b""
    return bytes(buf[:min(size, PEEK_BYTES)])


def _peek(stream: Any) -> bytes:
    """What waits in the kernel's socket buffer, left there for Tornado to read (MSG_PEEK)."""
    sock = getattr(stream, "socket", None)
    if not isinstance(sock, socket.socket):
        return b""
    try:
        return sock.recv(PEEK_BYTES, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except OSError:  # nothing waiting (EAGAIN), or the connection is gone
        return b""
