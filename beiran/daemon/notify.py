"""systemd's readiness protocol (`Type=notify`), written with the socket module: one datagram of
`KEY=VALUE` lines to the AF_UNIX socket named by `$NOTIFY_SOCKET`. Without that variable (not under
systemd) every call is a no-op, so the daemon never depends on it."""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger("beiran.daemon")


def notify(*lines: str) -> bool:
    """Send `lines` (e.g. "READY=1", "STATUS=...") to systemd; False when there is no one to tell."""
    target = os.environ.get("NOTIFY_SOCKET")
    if not target:
        return False
    if target.startswith("@"):  # abstract namespace
        target = "\0" + target[1:]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        sock.connect(target)
        sock.sendall("\n".join(lines).encode())
        return True
    except OSError as exc:
        log.warning("cannot notify systemd at %s: %s", target, exc)
        return False
    finally:
        sock.close()


def ready(status: str) -> bool:
    return notify("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")


def reloading() -> bool:
    # MONOTONIC_USEC lets systemd >= 253 (Type=notify-reload) match this reload to its request
    return notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")


def stopping() -> bool:
    return notify("STOPPING=1", "STATUS=shutting down")
