"""`GET`/`HEAD /blobs/<digest>` for peers: Range, sendfile for stored blobs, and streaming of blobs
that are still downloading. No path is ever built from the request except through parse_digest."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import struct

from tornado.iostream import StreamClosedError

from beiran.errors import InvalidRange
from beiran.handlers import BaseHandler
from beiran.store.blobstore import BlobEntry
from beiran.store.digest import parse_digest

log = logging.getLogger("beiran.serve")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
SENDFILE_MIN = 1 << 20


def parse_range(header: str | None, size: int | None) -> tuple[int, int | None] | None:
    """One `bytes=a-b` range -> (start, end_exclusive); None for no header; InvalidRange if bad."""
    if not header:
        return None
    m = _RANGE.match(header.strip())
    if not m or (not m.group(1) and not m.group(2)):
        raise InvalidRange(f"unsupported Range {header[:60]!r} (one bytes=a-b range only)")
    a, b = m.group(1), m.group(2)
    if not a:  # suffix range: last b bytes
        if size is None:
            raise InvalidRange("suffix range on a blob of unknown size")
        n = int(b)
        if n == 0:
            raise InvalidRange("empty suffix range")
        return max(0, size - n), size
    start = int(a)
    end = int(b) + 1 if b else size
    if end is not None and size is not None:
        end = min(end, size)
    if (size is not None and start >= size) or (end is not None and end <= start):
        raise InvalidRange(f"range {header[:60]!r} is outside the blob ({size} bytes)")
    return start, end


class BlobHandler(BaseHandler):
    """Serves a blob to peers (and, on the unix socket, to the local CLI)."""

    peer_auth = True

    async def head(self, digest: str) -> None:
        await self.get(digest, head=True)

    async def get(self, digest: str, head: bool = False) -> None:
        d = parse_digest(digest)
        store = self.ctx.store
        if not self.is_unix_socket() and store.access_policies:
            store.check_access(str(d), self.ctx.auth.uuid_of(self.request) if self.ctx.auth else None)
        async with store.use(str(d)) as target:
            size = target.size
            rng = parse_range(self.request.headers.get("Range"), size)
            start, end = rng if rng else (0, size)
            if rng:
                self.set_status(206)
                self.set_header("Content-Range", f"bytes {start}-{(end or 0) - 1}/{size if size is not None else '*'}")
            if end is not None:
                self.set_header("Content-Length", str(end - start))
            self.set_header("Accept-Ranges", "bytes")
            self.set_header("Content-Type", "application/octet-stream")
            self.set_header("Docker-Content-Digest", str(d))
            self.set_header("X-Beiran-Digest", str(d))
            self.set_header("X-Beiran-State", "complete" if isinstance(target, BlobEntry) else "downloading")
            if head:
                self.finish()
                return
            self.ctx.metrics.served_requests.inc()
            corrupt = bool(self.ctx.config.testing.get("corrupt_serving"))
            rate = self.ctx.config.testing.get("serve_rate")  # tests only: bytes per second
            if (isinstance(target, BlobEntry) and not corrupt and not rate and end is not None
                    and end - start >= SENDFILE_MIN and not self.is_unix_socket()):
                await self._sendfile(store.file_of(target), start, end)
                return
            sent = 0
            try:
                async for chunk in store.read(target, start, end, timeout=self.ctx.config.fetch.peer_timeout):
                    if corrupt and sent == 0:
                        chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
                    self.write(chunk)
                    sent += len(chunk)
                    await self.flush()
                    if rate:
                        await asyncio.sleep(len(chunk) / rate)
            except Exception as exc:  # noqa: BLE001 - headers are gone; all we can do is cut the body
                log.info("serving %s stopped at byte %d: %s", d.short, start + sent, exc)
                self.ctx.metrics.served_bytes.inc(sent)
                self.http_connection().close()
                return
            self.ctx.metrics.served_bytes.inc(sent)
            self.finish()

    async def _sendfile(self, path: str, start: int, end: int) -> None:
        """Headers through Tornado, then the body with sendfile(2) on the raw socket, off the loop."""
        timeout = self.ctx.config.fetch.peer_timeout
        sock = await detach_socket(self, timeout)
        sent = 0

        def send() -> int:
            with open(path, "rb") as fh:
                return sendfile_range(sock, fh.fileno(), start, end - start, timeout)

        try:
            sent = await asyncio.get_running_loop().run_in_executor(self.ctx.io_executor, send)
        except (OSError, StreamClosedError) as exc:
            log.info("sendfile of %s stopped: %s", path, exc)
        finally:
            self.ctx.metrics.served_bytes.inc(sent)
            sock.close()


async def detach_socket(handler: BaseHandler, timeout: float) -> socket.socket:
    """Send the headers, then take the connection's socket from Tornado for sendfile(2).

    The socket is made blocking (sendfile then moves a range in a few large calls; a socket with a
    Python timeout loops select/sendfile per socket buffer), SO_SNDTIMEO still bounds a stalled
    peer, and it is corked like nginx's tcp_nopush. Closing it flushes and ends the response."""
    await handler.flush()
    stream = handler.detach()
    try:
        fd = os.dup(stream.socket.fileno())
    finally:
        stream.close()
    sock = socket.socket(fileno=fd)
    sock.setblocking(True)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                    struct.pack("ll", int(timeout), int((timeout % 1) * 1e6)))
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
    except (OSError, AttributeError):
        pass
    return sock


def sendfile_range(sock: socket.socket, fileno: int, offset: int, count: int, timeout: float) -> int:
    """Blocking: send `count` bytes of a file from `offset`; returns what was sent."""
    done = 0
    while done < count:
        try:
            n = os.sendfile(sock.fileno(), fileno, offset + done, count - done)
        except BlockingIOError:
            raise TimeoutError(f"peer took no data for {timeout:.0f}s") from None
        if n == 0:
            break
        done += n
    return done
