"""Downloading a blob from peers: one stream from a byte offset, or ranges from several at once."""

from __future__ import annotations

import asyncio
import http.client
import logging
import select
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, cast
from urllib.parse import urlsplit

from beiran.errors import BeiranError, PeerBusy, PeerLacksBlob, UpstreamError, VerificationError
from beiran.fetch.pace import Pace, paced, unverified_limit
from beiran.fetch.peer_pool import PeerConnectionPool
from beiran.fetch.peer_response import PeerResponse
from beiran.fetch.recv_buffers import RECEIVE_BATCH, give_back, give_back_aligned, take_aligned, take_buffer
from beiran.httpstream import stream_request
from beiran.store.writer import ALIGN, WHOLE_MAX
from beiran.wire_numbers import ascii_digits

if TYPE_CHECKING:
    from beiran.context import DaemonContext
    from beiran.fetch.fetcher import FetchJob
    from beiran.store.writer import BlobWriter

log = logging.getLogger("beiran.fetch")
PIECE_FLUSH = 1 << 20
#: one socket read at most (a read returns what has arrived: a slow peer's bytes are seen as they come)
READ_SIZE = 1 << 20
#: ...and a batch that is not full is still written out after this long
FLUSH_SECONDS = 0.05
#: the loop hears of a large receive's progress this often when no coroutine waits for it
TELL_SECONDS = 0.1
#: a small blob is received whole (in memory, then stored in one go) unless it takes longer than this
WHOLE_WAIT = 0.5

class _Growth:
    """Tells the event loop of a receive's written batches, from the receive thread: the first at
    once (the fetch has answered), then at once while a coroutine waits for the blob to grow, else
    at most every TELL_SECONDS (progress, metrics), several batches in one call. A thread serving
    the blob is woken by the writer itself. Each call from a thread wakes the loop and then waits
    for the GIL the loop took: per 1 MiB batch that was a quarter of the busy receive threads'
    samples (py-spy, docker_pull), and loop time for readers that were not waiting."""

    def __init__(self, loop: asyncio.AbstractEventLoop, report: Callable[[int], None],
                 writer: BlobWriter) -> None:
        self.loop, self.report, self.writer = loop, report, writer
        self.got = 0  # written so far (receive thread)
        self.told = 0  # reported so far (loop)
        self.posted = False  # a report is on its way to the loop
        self.last = 0.0

    def add(self, n: int) -> None:
        """Receive thread: `n` more bytes are written."""
        self.got += n
        if self.posted:
            return  # the report on its way reads `got` when it runs
        now = time.monotonic()
        if self.last and not self.writer.loop_waiting and now - self.last < TELL_SECONDS:
            return
        self._post(now)

    def close(self) -> None:
        """Receive thread, at the end (or on an error): whatever was not reported yet."""
        if not self.posted and self.got != self.told:
            self._post(time.monotonic())

    def _post(self, now: float) -> None:
        self.posted, self.last = True, now
        self.loop.call_soon_threadsafe(self._tell)

    def _tell(self) -> None:
        self.posted = False  # before reading `got`: bytes added after this are posted again
        n = self.got - self.told
        self.told += n
        if n:
            self.report(n)


class PeerSource:
    def __init__(self, ctx: DaemonContext) -> None:
        self.ctx = ctx
        self.pool = PeerConnectionPool()

    def _url(self, node: str, digest: str) -> tuple[str, dict[str, str]]:
        base = self.ctx.peers.url_of(node)
        if not base:
            raise UpstreamError(f"peer {node[:8]} has no known address")
        path = f"/blobs/{digest}"
        return base + path, self.ctx.auth.headers("GET", path)

    async def stream_into(self, job: FetchJob, node: str, offset: int) -> None:
        """Feed the job's writer from `node`, from `offset` to the end."""
        writer = job.live_writer()
        url, headers = self._url(node, job.digest)
        if offset:
            headers["Range"] = f"bytes={offset}-"
        self.ctx.metrics.fetch_requests.labels("peer").inc()
        writer.source = f"peer:{node}"
        await writer.flush()
        if url.startswith("http://"):
            before = writer.available
            try:
                end = await self._on_receive_thread(job, node, url, headers, offset)
            finally:
                if writer.stored_whole and writer.available > before:  # told here, not by a wake-up
                    self._received(job, writer, writer.available - before)
            writer.seek(end)
        else:
            await self._receive_async(job, node, url, headers, offset)
        if job.size is not None and writer.position != job.size:
            raise UpstreamError(f"peer {node[:8]} stopped at byte {writer.position} of {job.size}")

    async def _on_receive_thread(self, job: FetchJob, node: str, url: str, headers: dict[str, str],
                                 offset: int, end: int | None = None) -> int:
        """`_receive_sync` on a receive thread, under the transfer's floor rate and byte bound (pace.py)."""
        loop = asyncio.get_running_loop()
        cfg = self.ctx.config.fetch
        pace = Pace(loop, cfg.peer_min_rate, cfg.peer_timeout, unverified_limit(self.ctx, job))
        try:
            return await loop.run_in_executor(self.ctx.receive_executor, self._receive_sync, job, node, url,
                                              headers, offset, loop, end, pace)
        finally:
            pace.close()

    def _receive_sync(self, job: FetchJob, node: str, url: str, headers: dict[str, str], offset: int,
                      loop: asyncio.AbstractEventLoop, end: int | None, pace: Pace) -> int:
        """The whole transfer on one I/O thread, on a kept-alive connection: small socket reads
        into a batch buffer, hashed and pwritten a batch at a time. `end`: only bytes
        [offset, end) are asked for (a piece of a multi-peer fetch), and only those are taken.

        Each step releases the GIL, so a node receives at close to hashing speed without the event
        loop touching every packet; the loop is told once per batch (progress, growing readers).
        """
        writer = job.live_writer()
        parts = urlsplit(url)
        if not parts.hostname:
            raise UpstreamError(f"peer {node[:8]} has no usable address ({url!r})")
        host, port = parts.hostname or "", parts.port or 80
        conn: http.client.HTTPConnection | None = None
        keep = False
        pace.begin()
        try:
            conn, resp = self._request_sync(host, port, parts.path, headers, pace)
            pace.resp, resp.limit = resp, pace.limit
            if resp.status == 404:
                raise PeerLacksBlob(f"peer {node[:8]} does not have {job.digest[:19]}")
            if resp.status == 429:
                raise PeerBusy(f"peer {node[:8]} is at its upload cap")
            if resp.status not in (200, 206):
                raise UpstreamError(f"peer {node[:8]} answered {resp.status} for {job.digest[:19]}")
            if (offset or end is not None) and resp.status != 206:
                raise UpstreamError(f"peer {node[:8]} ignored the Range request")
            length = resp.getheader("Content-Length")
            if end is not None:
                if length is not None and length != str(end - offset):
                    raise UpstreamError(f"peer {node[:8]} answered the range {offset}-{end - 1} with "
                                        f"{length[:20]!r} bytes")
            elif job.size is None and length and length.isdigit():
                if pace.limit is not None and int(length) + offset > pace.limit:
                    raise UpstreamError(f"peer {node[:8]} would send {length} bytes of {job.digest[:19]}, more "
                                        f"than this node takes of a blob of unknown size ({pace.limit})")
                job.size = writer.size = int(length) + offset
            pos = self._read_body(resp, job, node, offset, loop, end)
            if not pace.end() and pos != (end if end is not None else job.size):
                raise pace.error(node)  # cut for its pace: its body ended early
            if end is not None and pos != end:
                raise UpstreamError(f"peer {node[:8]} ended the range at {pos}, expected {end}")
            keep = resp.isclosed() and not resp.will_close
            return pos
        except (OSError, http.client.HTTPException) as exc:
            if not pace.end():
                raise pace.error(node) from None
            raise UpstreamError(f"peer {node[:8]}: {exc or type(exc).__name__}") from None
        finally:
            keep = pace.end() and keep  # a connection that was cut is not kept
            if conn is not None:
                if keep:
                    self.pool.put(host, port, conn)
                else:
                    conn.close()

    def _request_sync(self, host: str, port: int, path: str, headers: dict[str, str], pace: Pace
                      ) -> tuple[http.client.HTTPConnection, PeerResponse]:
        """Send the GET on a pooled connection; one the peer closed while it was idle (it fails
        before any byte of a response) is replaced by a fresh one, once."""
        timeout = self.ctx.config.fetch.peer_timeout
        while True:
            conn, reused = self.pool.get(host, port, timeout)
            self.ctx.metrics.peer_connections.labels("reused" if reused else "new").inc()
            try:
                pace.attach(conn)  # raises once the transfer was cut (a retry after the cut)
                conn.request("GET", path, headers=headers)
                return conn, cast(PeerResponse, conn.getresponse())
            except (ConnectionError, http.client.BadStatusLine):
                conn.close()
                if not reused:
                    raise
            except BaseException:
                conn.close()
                raise

    def _read_body(self, resp: PeerResponse, job: FetchJob, node: str, offset: int,
                   loop: asyncio.AbstractEventLoop, end: int | None = None) -> int:
        writer = job.live_writer()
        remaining = resp.length  # None: chunked or until close
        direct = remaining is not None and not resp.chunked and resp.fp is not None
        # a small blob whose whole body is coming: one buffer, stored and sealed in one go
        whole = (remaining if direct and end is None and offset == 0 and writer.size == remaining
                 and writer.fresh and remaining and remaining <= WHOLE_MAX else 0)
        if whole:
            pooled = take_buffer(whole)
            try:
                return self._read_small(resp, job, node, loop, memoryview(pooled)[:whole])
            finally:
                give_back(pooled)
        if remaining is not None and remaining <= WHOLE_MAX:
            batch = memoryview(bytearray(max(1, remaining)))  # small blobs: small buffer
            return self._read_batches(resp, job, node, offset, loop, end, batch, remaining)
        # a large body: page-aligned batches, written past the page cache (write_direct_blocking)
        space = take_aligned()
        try:
            return self._read_batches(resp, job, node, offset, loop, end, memoryview(space), remaining,
                                      aligned=True)
        finally:
            give_back_aligned(space)

    def _read_small(self, resp: PeerResponse, job: FetchJob, node: str,
                    loop: asyncio.AbstractEventLoop, batch: memoryview) -> int:
        """A small blob whose whole body is coming (from its first byte, its size known)."""
        writer = job.live_writer()
        whole = len(batch)
        got = self._read_whole(resp, writer, batch, whole)
        if got == whole:
            resp.close()  # read to its end by hand: the connection may carry the next request
            return got
        # a slow or stopped peer: what came so far is written now, and the rest batch by batch
        if got:
            writer.write_at_blocking(0, batch[:got])
            loop.call_soon_threadsafe(self._received, job, writer, got)
        return self._read_batches(resp, job, node, got, loop, None, batch, whole - got)

    def _read_batches(self, resp: PeerResponse, job: FetchJob, node: str, offset: int,
                      loop: asyncio.AbstractEventLoop, end: int | None, batch: memoryview,
                      remaining: int | None, aligned: bool = False) -> int:
        """Socket reads into `batch`, written out (hashed) a batch at a time; `remaining`: the
        body's bytes still to come (None: chunked or until close). `aligned`: `batch` is a
        page-aligned ALIGN_SPACE; each batch starts in it at its file offset modulo ALIGN."""
        writer = job.live_writer()
        told = _Growth(loop, lambda n: self._received(job, writer, n), writer)
        try:
            return self._read_batches_into(resp, node, offset, end, batch, remaining, writer, told, aligned)
        finally:
            told.close()

    def _read_batches_into(self, resp: PeerResponse, node: str, offset: int, end: int | None,
                           space: memoryview, remaining: int | None, writer: BlobWriter,
                           told: _Growth, aligned: bool) -> int:
        direct = remaining is not None and not resp.chunked and resp.fp is not None
        limit = RECEIVE_BATCH if aligned else len(space)
        pos, filled, last = offset, 0, time.monotonic()
        batch = space[pos % ALIGN:pos % ALIGN + limit] if aligned else space
        while True:
            want = min(READ_SIZE, limit - filled, remaining if remaining is not None else READ_SIZE)
            if want <= 0 and remaining == 0:
                n = 0
            elif direct:  # straight into the batch, at most one recv (readinto would wait to fill it)
                n = resp.fp.readinto1(batch[filled:filled + want])
            else:
                data = resp.read1(want)
                n = len(data)
                batch[filled:filled + n] = data
            filled += n
            resp.received += n  # the transfer's pace (pace.py)
            if remaining is not None:
                remaining -= n
            if filled and (not n or filled == limit or time.monotonic() - last >= FLUSH_SECONDS):
                if end is not None and pos + filled > end:
                    raise UpstreamError(f"peer {node[:8]} sent more than the range asked for")
                if writer.size is not None and pos + filled > writer.size:
                    raise VerificationError(f"peer {node[:8]} sent more than the blob's {writer.size} bytes")
                if resp.limit is not None and pos + filled > resp.limit:
                    raise UpstreamError(f"peer {node[:8]} sent more of a blob of unknown size than this "
                                        f"node takes ({resp.limit})")
                if aligned:
                    writer.write_direct_blocking(pos, batch[:filled])
                else:
                    writer.write_at_blocking(pos, batch[:filled])
                pos += filled
                told.add(filled)
                filled, last = 0, time.monotonic()
                if aligned:
                    batch = space[pos % ALIGN:pos % ALIGN + limit]
            if not n:
                break
        if direct and remaining == 0:
            resp.close()  # read to its end by hand: the connection may carry the next request
        return pos

    @staticmethod
    def _read_whole(resp: PeerResponse, writer: BlobWriter, buf: memoryview, size: int) -> int:
        """The whole body into `buf`, then stored, verified, fsynced and moved into the store on
        this thread (`store_whole_blocking`): the loop is woken once per blob (the executor's
        answer), where it was woken once per batch and again for the seal's own I/O hop; each
        wake-up of another thread costs the waker a syscall with the GIL held (py-spy: 11% of n2's
        GIL time was executor submits). Returns the bytes read: less than `size` when the peer
        stalls past WHOLE_WAIT (the caller goes on batch by batch, so readers see progress) or stops."""
        assert resp.fp is not None
        filled, deadline = 0, time.monotonic() + WHOLE_WAIT
        poller = select.poll()  # a stalled peer must not hold back what came: wait for more only so long
        poller.register(resp.fp.fileno(), select.POLLIN)
        while filled < size:
            if filled and not poller.poll(max(0.0, deadline - time.monotonic()) * 1000):
                return filled
            n = resp.fp.readinto1(buf[filled:min(size, filled + READ_SIZE)])
            if not n:
                return filled
            filled += n
            resp.received += n  # the transfer's pace (pace.py)
        writer.store_whole_blocking(buf[:size])  # the loop hears of it when this thread returns
        return size

    def _received(self, job: FetchJob, writer: BlobWriter, n: int) -> None:
        writer.notify_growth()
        self.ctx.fetcher.account(job, "peer", n)

    async def _receive_async(self, job: FetchJob, node: str, url: str, headers: dict[str, str],
                             offset: int) -> None:
        writer = job.live_writer()
        cfg = self.ctx.config.fetch
        limit = unverified_limit(self.ctx, job)  # the bounds of the receive-thread path (pace.py)
        async with paced(node, cfg.peer_min_rate, cfg.peer_timeout) as received, \
                stream_request(url, headers) as resp:
            if resp.code == 429:
                raise PeerBusy(f"peer {node[:8]} is at its upload cap")
            if resp.code not in (200, 206):
                raise UpstreamError(f"peer {node[:8]} answered {resp.code} for {job.digest[:19]}")
            if offset and resp.code != 206:
                raise UpstreamError(f"peer {node[:8]} ignored the Range request")
            length = resp.headers.get("Content-Length")
            if length and ascii_digits(length):
                if limit is not None and int(length) + offset > limit:
                    raise UpstreamError(f"peer {node[:8]} would send {int(length) + offset} bytes, more than this "
                                        f"node takes of a blob of unknown size ({limit})")
                if job.size is None:
                    job.size = writer.size = int(length) + offset
            async for chunk in resp.chunks(cfg.peer_timeout):
                if limit is not None and writer.position + len(chunk) > limit:
                    raise UpstreamError(f"peer {node[:8]} sent more than this node takes of a blob of unknown "
                                        f"size ({limit})")
                received(len(chunk))
                await writer.feed(chunk)
                self.ctx.fetcher.account(job, "peer", len(chunk))
        await writer.flush()

    async def fill_ranges(self, job: FetchJob, nodes: list[str], failed: set[str]) -> set[str]:
        """Fetch pieces from several complete holders at once; returns the peers that failed.

        Pieces a failing peer leaves behind go back on the queue for the others; what no peer can
        serve is left for the caller to finish from the next source.
        """
        assert job.size is not None
        piece = self.ctx.config.fetch.piece_size
        pieces = deque((a, min(a + piece, job.size)) for a in range(0, job.size, piece))
        bad: set[str] = set()

        async def worker(node: str) -> None:
            while pieces:
                start, end = pieces.popleft()
                pos = start
                try:
                    pos = await self._piece(job, node, start, end)
                    job.contributors.add(node)
                except (BeiranError, OSError) as exc:
                    log.info("peer %s failed on range %d-%d of %s: %s", node[:8], pos, end,
                             job.digest[:19], exc)
                    job.contributors.add(node)
                    pieces.appendleft((pos, end))
                    bad.add(node)
                    self.ctx.metrics.peer_failures.inc()
                    return

        await asyncio.gather(*(worker(n) for n in nodes))
        await job.live_writer().flush()
        failed |= bad
        return bad

    async def _piece(self, job: FetchJob, node: str, start: int, end: int) -> int:
        url, headers = self._url(node, job.digest)
        headers["Range"] = f"bytes={start}-{end - 1}"
        self.ctx.metrics.fetch_requests.labels("peer").inc()
        if url.startswith("http://"):  # as stream_into: on a receive thread, kept-alive connection
            return await self._on_receive_thread(job, node, url, headers, start, end)
        pos, buf, buf_len = start, [], 0
        cfg = self.ctx.config.fetch
        async with paced(node, cfg.peer_min_rate, cfg.peer_timeout) as received, \
                stream_request(url, headers) as resp:
            if resp.code != 206:
                raise UpstreamError(f"peer {node[:8]} answered {resp.code} to a range request")
            async for chunk in resp.chunks(cfg.peer_timeout):
                if pos + buf_len + len(chunk) > end:
                    raise UpstreamError(f"peer {node[:8]} sent more than the range asked for")
                received(len(chunk))
                buf.append(chunk)
                buf_len += len(chunk)
                if buf_len >= PIECE_FLUSH:
                    await job.live_writer().write_at(pos, b"".join(buf))
                    self.ctx.fetcher.account(job, "peer", buf_len)
                    pos, buf, buf_len = pos + buf_len, [], 0
        if buf_len:
            await job.live_writer().write_at(pos, b"".join(buf))
            self.ctx.fetcher.account(job, "peer", buf_len)
            pos += buf_len
        if pos != end:
            raise UpstreamError(f"peer {node[:8]} ended the range at {pos}, expected {end}")
        return pos
