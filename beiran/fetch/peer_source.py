"""Downloading a blob from peers: one stream from a byte offset, or ranges from several at once."""

from __future__ import annotations

import asyncio
import http.client
import logging
from collections import deque
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from beiran.errors import BeiranError, UpstreamError, VerificationError
from beiran.httpstream import stream_request

if TYPE_CHECKING:
    from beiran.context import DaemonContext
    from beiran.fetch.fetcher import FetchJob
    from beiran.store.writer import BlobWriter

log = logging.getLogger("beiran.fetch")
PIECE_FLUSH = 1 << 20
RECEIVE_BUFFER = 4 << 20


class PeerSource:
    def __init__(self, ctx: DaemonContext) -> None:
        self.ctx = ctx

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
            loop = asyncio.get_running_loop()
            end = await loop.run_in_executor(self.ctx.receive_executor, self._receive_sync, job, node, url,
                                             headers, offset, loop)
            writer.seek(end)
        else:
            await self._receive_async(job, node, url, headers, offset)
        if job.size is not None and writer.position != job.size:
            raise UpstreamError(f"peer {node[:8]} stopped at byte {writer.position} of {job.size}")

    def _receive_sync(self, job: FetchJob, node: str, url: str, headers: dict[str, str], offset: int,
                      loop: asyncio.AbstractEventLoop) -> int:
        """The whole transfer on one I/O thread: socket readinto a large buffer, hash, pwrite.

        Each step releases the GIL, so a node receives at close to hashing speed without the event
        loop touching every packet; the loop is told once per buffer (progress, growing readers).
        """
        writer = job.live_writer()
        parts = urlsplit(url)
        if not parts.hostname:
            raise UpstreamError(f"peer {node[:8]} has no usable address ({url!r})")
        conn = http.client.HTTPConnection(parts.hostname, parts.port or 80,
                                          timeout=self.ctx.config.fetch.peer_timeout)
        try:
            conn.request("GET", parts.path, headers=headers)
            resp = conn.getresponse()
            if resp.status not in (200, 206):
                raise UpstreamError(f"peer {node[:8]} answered {resp.status} for {job.digest[:19]}")
            if offset and resp.status != 206:
                raise UpstreamError(f"peer {node[:8]} ignored the Range request")
            length = resp.getheader("Content-Length")
            if job.size is None and length and length.isdigit():
                job.size = writer.size = int(length) + offset
            left = (writer.size - offset) if writer.size is not None else RECEIVE_BUFFER
            buf = memoryview(bytearray(max(1, min(left, RECEIVE_BUFFER))))  # small blobs: small buffer
            pos = offset
            while True:
                n = resp.readinto(buf)
                if not n:
                    break
                if writer.size is not None and pos + n > writer.size:
                    raise VerificationError(f"peer {node[:8]} sent more than the blob's {writer.size} bytes")
                writer.write_at_blocking(pos, buf[:n])
                pos += n
                loop.call_soon_threadsafe(self._received, job, writer, n)
            return pos
        except (OSError, http.client.HTTPException) as exc:
            raise UpstreamError(f"peer {node[:8]}: {exc or type(exc).__name__}") from None
        finally:
            conn.close()

    def _received(self, job: FetchJob, writer: BlobWriter, n: int) -> None:
        writer.notify_growth()
        self.ctx.fetcher.account(job, "peer", n)

    async def _receive_async(self, job: FetchJob, node: str, url: str, headers: dict[str, str],
                             offset: int) -> None:
        writer = job.live_writer()
        async with stream_request(url, headers) as resp:
            if resp.code not in (200, 206):
                raise UpstreamError(f"peer {node[:8]} answered {resp.code} for {job.digest[:19]}")
            if offset and resp.code != 206:
                raise UpstreamError(f"peer {node[:8]} ignored the Range request")
            length = resp.headers.get("Content-Length")
            if job.size is None and length and length.isdigit():
                job.size = writer.size = int(length) + offset
            async for chunk in resp.chunks(self.ctx.config.fetch.peer_timeout):
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
        pos, buf, buf_len = start, [], 0
        async with stream_request(url, headers) as resp:
            if resp.code != 206:
                raise UpstreamError(f"peer {node[:8]} answered {resp.code} to a range request")
            async for chunk in resp.chunks(self.ctx.config.fetch.peer_timeout):
                if pos + buf_len + len(chunk) > end:
                    raise UpstreamError(f"peer {node[:8]} sent more than the range asked for")
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
