"""Serving a blob to an HTTP client: the one place that decides which bytes may leave the node.

A blob is served complete (from the store, with sendfile(2) where it can) or while it is still
downloading. A download's last `hold` bytes wait for its verification, so a body that fails
verification always arrives short: no package client or peer ever receives a complete body that
has not verified. A failure before the first byte leaves is still a proper error answer (or, when
the download goes on from another source, the verified copy); after it, the body is cut.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import mmap
import os
import re
import select
import socket
import threading
from collections import deque
from collections.abc import AsyncIterator, Awaitable
from typing import TYPE_CHECKING, Any

from tornado.iostream import StreamClosedError

from beiran.access import check_blob_access
from beiran.errors import BeiranError, BlobNotFound, InvalidRange, UpstreamError
from beiran.store.blobstore import BlobEntry
from beiran.store.writer import ALIGN, O_DIRECT, BlobWriter

if TYPE_CHECKING:
    from beiran.handlers import BaseHandler
    from beiran.store.blobstore import BlobStore

log = logging.getLogger("beiran.serve")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
SENDFILE_MIN = 1 << 20
#: a stored blob up to this size is sent by the event loop itself (non-blocking sendfile as the
#: socket takes it, as asyncio's loop.sock_sendfile and aiohttp do): waking an I/O thread per
#: answer costs more than the send on a busy machine (the loop, holding the GIL, is often preempted
#: by the thread it wakes: py-spy showed 27% of n2's busy loop time in executor submit)
LOOP_SENDFILE_MAX = 8 << 20
#: a download no larger is answered once it verified, whole, by the loop's sendfile as a stored blob
#: is: streaming it as it grows cost three thread hops per blob (open, growth, held tail) for a
#: body that arrives in a few milliseconds anyway (200 .debs of 1 MiB through apt)
SMALL_DOWNLOAD = 2 << 20
CHUNK = 1 << 20
#: a thread sending a growing blob waits this long for more before handing back to the loop
#: (an I/O thread is not held by a stalled download)
GROWTH_WAIT = 0.2
#: a large body for a client on this same host is copied through a buffer of this size instead of
#: sendfile(2)'d (see `same_host`)
COPY_CHUNK = 1 << 20
Target = BlobEntry | BlobWriter
_buffers = threading.local()


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
        if int(b) == 0:
            raise InvalidRange("empty suffix range")
        return max(0, size - int(b)), size
    start = int(a)
    end = int(b) + 1 if b else size
    if end is not None and size is not None:
        end = min(end, size)
    if (size is not None and start >= size) or (end is not None and end <= start):
        raise InvalidRange(f"range {header[:60]!r} is outside the blob ({size} bytes)")
    return start, end


class _Unsent(Exception):
    """The body failed before any byte left: the answer can still be an error or another copy."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


async def serve_blob(handler: BaseHandler, digest: str, *, size: int | None = None,
                     source: dict[str, Any] | None = None, fetch: bool = True, head: bool = False,
                     ranges: str = "strict", hold: int = 1, end_short: bool = False,
                     before_end: Awaitable[Any] | None = None, to_peer: bool = False) -> None:
    """Answer `handler` with the blob; the caller has set only its own format's headers.

    fetch: start (or join) the download when the blob is not here (`size`, `source` as for
      `Fetcher.start`); else only a stored or downloading blob is served.
    ranges: "strict" (one range, 416 when unsatisfiable), "lenient" (a bad range gets the whole
      body) or "off".
    hold: bytes of a download held until it verified (a body no larger is sent only verified).
    end_short: a failed body ends as a clean short chunked body instead of a cut connection (npm
      retries a bad integrity by itself, never a reset); no Content-Length is sent for downloads.
    before_end: awaited before the last bytes go (apt: the file is recorded in its index).
    to_peer: the peer protocol: `X-Beiran-State`, no unverified bytes of a failed source, and
      the test suite's tampering switches.
    """
    ctx = handler.ctx
    store = ctx.store
    check_blob_access(handler, digest)
    job = await ctx.fetcher.start(digest, size, source) if fetch and not store.has(digest) else None
    for _ in range(3):
        try:
            async with store.use(digest) as target:
                await _serve(handler, store, target, head, ranges, hold, end_short, before_end, to_peer)
                return
        except _Unsent as exc:
            cause: BaseException = exc.cause
        except BlobNotFound as exc:
            cause = exc
        if job is None:
            raise cause
        # nothing has left yet and the download may go on from another source: its end decides
        await asyncio.shield(job.done)  # raises the download's own error
        if not store.has(digest):
            raise cause
    raise UpstreamError(f"blob {digest[:19]}: the download kept changing while it was served")


async def _serve(handler: BaseHandler, store: BlobStore, target: Target, head: bool, ranges: str,
                 hold: int, end_short: bool, before_end: Awaitable[Any] | None, to_peer: bool) -> None:
    writer = target if isinstance(target, BlobWriter) else None
    if to_peer and writer is not None and writer.untrusted:
        raise BlobNotFound(f"blob {writer.digest.short} holds bytes of a failed source: not served "
                           "to peers before it verified")
    if writer is not None and writer.size is None and not head:
        try:  # the source's first answer tells the size (for Content-Length and Range)
            await writer.wait_for_growth(0, handler.ctx.config.fetch.peer_timeout)
        except BeiranError as exc:
            raise _Unsent(exc) from exc
    size = target.size
    rng = None
    if ranges != "off":
        handler.set_header("Accept-Ranges", "bytes")
        try:
            rng = parse_range(handler.request.headers.get("Range"), size)
        except InvalidRange as exc:
            if ranges == "strict":
                exc.details["size"] = size  # for the answer's `Content-Range: bytes */SIZE`
                raise
    start, end = rng if rng else (0, size)
    if rng:
        handler.set_status(206)
        handler.set_header("Content-Range", f"bytes {start}-{(end or 0) - 1}/{size if size is not None else '*'}")
    length_known = end is not None and not (end_short and writer is not None)
    if length_known:
        handler.set_header("Content-Length", str((end or 0) - start))
    if to_peer:
        handler.set_header("X-Beiran-State", "downloading" if writer is not None else "complete")
    if head:
        handler.finish()
        return
    ctx = handler.ctx
    testing = ctx.config.testing if to_peer else {}
    if to_peer:
        ctx.metrics.served_requests.inc()
    if (end is not None and end - start >= SENDFILE_MIN and length_known and not testing
            and not handler.is_unix_socket()):
        sent = await _sendfile(handler, store, target, start, end, hold, before_end, to_peer)
    else:
        timeout = ctx.config.fetch.peer_timeout
        try:
            sent = await relay(handler, _checked(store, target, start, end, timeout, before_end),
                               hold if writer is not None else 0, end_short and not length_known, testing)
        except Exception as exc:
            raise _Unsent(exc) from exc
    if to_peer:
        ctx.metrics.served_bytes.inc(sent)


async def relay(handler: BaseHandler, chunks: AsyncIterator[bytes], hold: int = 0, end_short: bool = False,
                testing: dict[str, Any] | None = None) -> int:
    """Send `chunks` through Tornado, less the last `hold` bytes, which go once the iterator ended
    without raising (it raises when the bytes failed verification). Raises only while nothing has
    left (the answer can still be an error); after that a failure cuts the body, or with
    `end_short` ends it cleanly without the held bytes. Returns the bytes sent."""
    testing = testing or {}
    held: deque[bytes] = deque()
    held_len = sent = 0
    rate = testing.get("serve_rate")  # tests only: bytes per second
    try:
        async for chunk in chunks:
            if testing.get("corrupt_serving") and sent + held_len == 0 and chunk:
                chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
            held.append(chunk)
            held_len += len(chunk)
            out = 0
            while held and held_len - len(held[0]) >= hold:
                c = held.popleft()
                held_len -= len(c)
                handler.write(c)
                out += len(c)
            if out:
                sent += out
                await handler.flush()
                if rate:
                    await asyncio.sleep(out / rate)
    except StreamClosedError:
        return sent  # the client went away
    except Exception as exc:
        if not sent:
            raise
        log.warning("%s failed after streaming started, at byte %d (%s); the body ends short",
                    handler.request.path[:120], sent, exc)
        if end_short:
            handler.finish()  # a clean end without the held bytes: the client's own check fails
        else:
            handler.http_connection().close()  # the client sees the body cut
        return sent
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
    handler.finish(b"".join(held))
    return sent + held_len


async def _checked(store: BlobStore, target: Target, start: int, end: int | None, timeout: float,
                   before_end: Awaitable[Any] | None) -> AsyncIterator[bytes]:
    """The blob's bytes; ends only once a download verified (and `before_end` is done)."""
    framed = target.size  # what the answer was framed with (_serve called this with no await between)
    async for chunk in store.read(target, start, end, chunk_size=CHUNK, timeout=timeout):
        yield chunk
    if isinstance(target, BlobWriter):
        await verified(target, timeout * 2)
        _as_framed(target, framed)
    if before_end is not None:
        await asyncio.wait_for(asyncio.shield(before_end), 30)


def _as_framed(writer: BlobWriter, framed: int | None) -> None:
    """A download's answer was framed (its end, its Content-Length) with the size known then, which
    may have been only a peer's claim; the verified blob's own size must be that size, or the
    answer would end as complete where the blob does not."""
    if framed is not None and writer.available != framed:
        raise UpstreamError(f"blob {writer.digest.short} is {writer.available} bytes, not the {framed} "
                            "its answer was framed with (a peer's claim)")


async def verified(writer: BlobWriter, timeout: float) -> None:
    """Until the writer's bytes matched their digest; raises if the download failed instead."""
    await asyncio.wait([writer.verified, writer.done], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    v = writer.verified
    if v.done() and not v.cancelled() and v.exception() is None:
        return
    if writer.failed:
        raise writer.error or UpstreamError(f"blob {writer.digest.short}: download failed")
    raise UpstreamError(f"blob {writer.digest.short}: not verified after {timeout:.0f}s")


async def _sendfile(handler: BaseHandler, store: BlobStore, target: Target, start: int, end: int,
                    hold: int, before_end: Awaitable[Any] | None, to_peer: bool = False) -> int:
    """Headers through Tornado, then the body with sendfile(2) off the event loop, on the same
    connection, which then stays open for the client's next request (HTTP/1.1 keep-alive: a peer or
    apt fetching many blobs pays one handshake, not one per blob). For a download: what has arrived
    as it arrives, and the held tail once the blob verified; a small one to a client (not to a
    peer, whose progress timeout is shorter) once it verified, whole."""
    framed = target.size  # what the answer was framed with (_serve called this with no await between)
    ctx = handler.ctx
    loop = asyncio.get_running_loop()
    timeout = ctx.config.fetch.peer_timeout
    writer = target if isinstance(target, BlobWriter) else None
    whole = False
    try:
        if writer is not None and end - start <= SMALL_DOWNLOAD and not to_peer:
            while writer.available < end and not writer.done.done():  # bounded by progress, as streaming
                await writer.wait_for_growth(writer.available, timeout)
            await verified(writer, timeout * 2)  # a failed download is an answer, not a cut
            _as_framed(writer, framed)
            writer, whole = None, True  # verified bytes, in the temp file or already moved to the store
        if writer is not None and writer.available <= start:
            await writer.wait_for_growth(start, timeout)  # a dead source is an answer, not a cut
        # a stored blob's file opens at once (as Tornado's StaticFileHandler does): a thread hop
        # here let every other ready task run before this answer's first byte
        fd = _open(store, target) if writer is None else await ctx.run_blocking(_open, store, target)
    except Exception as exc:
        raise _Unsent(exc) from exc
    pos = start
    try:
        sock_fd = await _body_socket(handler)
    except (StreamClosedError, OSError):
        os.close(fd)
        return 0
    # same_host only where it is used (the thread paths, below): parsing the addresses cost 7% of
    # n2's event loop serving apt 200 small .debs, each sent by the loop's own sendfile
    threaded = writer is not None or end - start > LOOP_SENDFILE_MAX
    copy = threaded and not to_peer and same_host(handler.http_connection().stream.socket)
    uncached = isinstance(target, BlobEntry) and target.uncached
    send_range = (copy_uncached if uncached else copy_range) if copy else sendfile_range

    def send(upto: int) -> int:
        n = send_range(sock_fd, fd, pos, upto - pos, timeout)
        if n < upto - pos:
            raise UpstreamError(f"blob {target.digest}: file ended at byte {pos + n}")
        return n

    def send_growing(writer: BlobWriter, at: int, last: int) -> int:
        """Bytes [at, last) of a growing blob as they arrive, woken by the writer itself: a hop
        through the event loop and back per received batch cost the loop, and under load the
        receive thread, more than the sending. Returns to the loop (which decides what a pause
        or an end means) when the blob paused for GROWTH_WAIT or ended."""
        # written past the page cache (write_direct_blocking): read past it too, for any client
        grow_range = copy_uncached if writer.direct else send_range
        p = at
        while p < last:
            avail = writer.wait_available_blocking(p, GROWTH_WAIT)
            if avail <= p:
                break
            upto = min(avail, last)
            n = grow_range(sock_fd, fd, p, upto - p, timeout)
            p += n
            if p < upto:
                raise UpstreamError(f"blob {target.digest}: file ended at byte {p}")
        return p - at

    conn = handler.http_connection()
    try:
        if whole:  # all but the held tail while `before_end` (the commit, the plugin's record) runs
            for upto in (max(start, end - max(hold, 1)), end):
                sent = await sendfile_on_loop(sock_fd, fd, pos, upto - pos, timeout)
                if sent < upto - pos:
                    raise UpstreamError(f"blob {target.digest}: file ended at byte {pos + sent}")
                pos += sent
                if before_end is not None:
                    await asyncio.wait_for(asyncio.shield(before_end), 30)
                    before_end = None
        elif writer is None and end - start <= LOOP_SENDFILE_MAX:
            sent = await sendfile_on_loop(sock_fd, fd, pos, end - pos, timeout)
            if sent < end - pos:
                raise UpstreamError(f"blob {target.digest}: file ended at byte {pos + sent}")
            pos += sent
        elif writer is None:
            pos += await loop.run_in_executor(ctx.io_executor, send, end)
        else:
            last = max(start, end - max(hold, 1))
            while pos < last:
                if writer.available <= pos:
                    if writer.done.done():
                        raise UpstreamError(f"blob {writer.digest.short} ended at byte {writer.available}")
                    await writer.wait_for_growth(pos, timeout)
                if writer.available > pos:
                    pos += await loop.run_in_executor(ctx.io_executor, send_growing, writer, pos, last)
            await verified(writer, timeout * 2)
            _as_framed(writer, framed)
            if before_end is not None:
                await asyncio.wait_for(asyncio.shield(before_end), 30)
            pos += await loop.run_in_executor(ctx.io_executor, send, end)
    except Exception as exc:  # noqa: BLE001 - headers are gone: closing the connection cuts the body
        log.warning("%s failed after streaming started, at byte %d (%s); the body ends short",
                    handler.request.path[:120], pos, exc)
        conn.close()
        return pos - start
    finally:
        os.close(sock_fd)
        os.close(fd)
        if not conn.stream.closed():
            _cork(conn.stream.socket, False)
    # Tornado counts the body against Content-Length; these bytes bypassed it
    remaining = getattr(conn, "_expected_content_remaining", None)
    if remaining is not None:
        conn._expected_content_remaining = remaining - (pos - start)
    if not conn.stream.closed():
        handler.finish()
    return pos - start


async def _body_socket(handler: BaseHandler) -> int:
    """Send the headers, then a descriptor of the connection's socket for sendfile(2) to write to.

    Tornado keeps the connection; nothing else writes to it until the body is done. The descriptor
    is our own duplicate: if Tornado closes its socket meanwhile (the client went away), the number
    cannot be reused by another connection under the sending thread.

    The socket is corked before the headers go: they leave with the body's first bytes. Sent on
    their own (TCP_NODELAY), they woke the client for a head without a body and, on a busy host,
    the woken reader took the CPU from the sender in mid-answer (cProfile: a peer's header send
    took ~1 ms of n1's event loop per blob, the body's sendfile ~0.3 ms)."""
    stream = handler.http_connection().stream
    _cork(stream.socket, True)
    flushed = handler.flush()
    if not flushed.done():  # the headers did not all go at once: wait (sendfile must come after)
        await flushed
    flushed.result()  # StreamClosedError: the client went away
    if stream.closed() or stream.socket is None:
        raise StreamClosedError()
    return os.dup(stream.socket.fileno())


def same_host(sock: socket.socket | None) -> bool:
    """Whether the client is on this host (loopback, or our own address): a package client's large
    body is then copied, not sendfile(2)'d. Over loopback, sendfile hands our page-cache pages to the
    client's socket, and a client reading in small pieces pays for it: a 32 KiB reader of 256 MiB
    spent 0.19 s against 0.09-0.11 s when the sender copied, which costs the sender 0.04 s more
    (bench/loopback_send); skopeo (32 KiB reads) used ~0.15 s more CPU through Beiran than from
    Debian's registry, which copies, and the same once Beiran copied. A 1 MiB reader (a peer) gains
    little (both sides 0.13 s vs 0.14 s), and across a NIC nobody touches our pages: peers and
    remote clients keep sendfile."""
    if sock is None:
        return False
    try:
        peer, local = sock.getpeername()[0], sock.getsockname()[0]
    except (OSError, IndexError, TypeError):  # closed meanwhile, or not an IP socket
        return False
    return peer == local or _is_loopback(peer)


def _is_loopback(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool((mapped or ip).is_loopback)


def _cork(sock: socket.socket | None, on: bool) -> None:
    """TCP_CORK (nginx's tcp_nopush) while a body goes out: full segments even when a download
    feeds sendfile a little at a time, so the client reads in large pieces. Off flushes the rest."""
    if sock is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1 if on else 0)
    except (OSError, AttributeError):  # not TCP (a unix socket), or closed meanwhile
        pass


def _open(store: BlobStore, target: Target) -> int:
    """The blob's file; a download committed meanwhile has moved from its temp file to the store."""
    if isinstance(target, BlobEntry):
        return os.open(store.file_of(target), os.O_RDONLY)
    try:
        return os.open(target.tmp_path, os.O_RDONLY)
    except FileNotFoundError:
        return os.open(store.path_for(target.digest), os.O_RDONLY)


async def sendfile_on_loop(sock_fd: int, fileno: int, offset: int, count: int, timeout: float) -> int:
    """Send `count` bytes of a file from `offset` to a non-blocking socket from the event loop,
    waiting (at most `timeout` at a time) for the socket to take more; returns what was sent."""
    loop = asyncio.get_running_loop()
    done = 0
    while done < count:
        try:
            n = os.sendfile(sock_fd, fileno, offset + done, count - done)
        except BlockingIOError:
            room = loop.create_future()
            loop.add_writer(sock_fd, _wake, room)
            try:
                await asyncio.wait_for(room, timeout)
            except TimeoutError:
                raise TimeoutError(f"client took no data for {timeout:.0f}s") from None
            finally:
                loop.remove_writer(sock_fd)
            continue
        if n == 0:
            break
        done += n
    return done


def _wake(room: asyncio.Future[None]) -> None:
    if not room.done():
        room.set_result(None)


def sendfile_range(sock_fd: int, fileno: int, offset: int, count: int, timeout: float) -> int:
    """Blocking: send `count` bytes of a file from `offset` to a (non-blocking) socket, waiting
    for room at most `timeout` at a time; returns what was sent (less: the file ended)."""
    done = 0
    poller = select.poll()
    poller.register(sock_fd, select.POLLOUT)
    while done < count:
        try:
            n = os.sendfile(sock_fd, fileno, offset + done, count - done)
        except BlockingIOError:
            if not poller.poll(timeout * 1000):
                raise TimeoutError(f"client took no data for {timeout:.0f}s") from None
            continue
        if n == 0:
            break
        done += n
    return done


def copy_range(sock_fd: int, fileno: int, offset: int, count: int, timeout: float,
               uncached: bool = False) -> int:
    """Blocking, as `sendfile_range`, but the bytes go through this thread's buffer (pread, then
    write to the socket): for a client on this host (`same_host`). Returns what was sent.

    `uncached`: the file was written by direct I/O (write_direct_blocking), so it is not in the page
    cache; it is read the same way, past the cache: read through the cache it would fill fresh
    memory (on a VM that hands free memory back to its host, a host fault per page: 0.4 s of CPU
    per 256 MiB)."""
    poller = select.poll()
    poller.register(sock_fd, select.POLLOUT)
    reader = _Reader(fileno, uncached)
    done = 0
    try:
        while done < count:
            view = reader.read(offset + done, min(COPY_CHUNK, count - done))
            if not view:
                break
            sent = 0
            while sent < len(view):
                try:
                    sent += os.write(sock_fd, view[sent:])
                except BlockingIOError:
                    if not poller.poll(timeout * 1000):
                        raise TimeoutError(f"client took no data for {timeout:.0f}s") from None
            done += len(view)
    finally:
        reader.close()
    return done


def copy_uncached(sock_fd: int, fileno: int, offset: int, count: int, timeout: float) -> int:
    return copy_range(sock_fd, fileno, offset, count, timeout, uncached=True)


class _Reader:
    """Reads of one file for `copy_range`: through the page cache, or for an uncached file by
    direct I/O through a second descriptor (page-aligned reads into a page-aligned buffer)."""

    def __init__(self, fileno: int, uncached: bool) -> None:
        self.fileno = fileno
        self.direct = -2
        if uncached and O_DIRECT:
            try:
                self.direct = os.open(f"/proc/self/fd/{fileno}", os.O_RDONLY | O_DIRECT)
            except OSError:  # no /proc, or a file system without direct I/O: through the cache
                pass
        buf: memoryview | None = getattr(_buffers, "buf", None)
        if buf is None:  # one per I/O thread, reused: a fresh one each time would be faulted in anew
            buf = _buffers.buf = memoryview(mmap.mmap(-1, COPY_CHUNK + ALIGN))  # page-aligned
        self.buf = buf

    def read(self, at: int, want: int) -> memoryview:
        buf = self.buf
        if self.direct >= 0:
            skip = at % ALIGN
            try:
                got = os.preadv(self.direct, [buf[:-(-(skip + want) // ALIGN) * ALIGN]], at - skip)
                return buf[skip:skip + max(0, min(got - skip, want))]
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self.close()  # refused after all: through the page cache
        return buf[:os.preadv(self.fileno, [buf[:want]], at)]

    def close(self) -> None:
        if self.direct >= 0:
            os.close(self.direct)
        self.direct = -2
