"""A small blob from a peer is received whole (issue 16, speed): read into one buffer, written,
hashed, and only when it verified fsynced and moved into the store, all on the receiving thread
(one hop to the event loop per blob). In-process: a Tornado app plays the peer (it can send wrong
bytes, or pause mid-body); the receiving side is the real PeerSource, store and serving code."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import tornado.web
from tornado.testing import AsyncHTTPTestCase, gen_test

from beiran.access import Access
from beiran.errors import VerificationError
from beiran.fetch import peer_source
from beiran.fetch.fetcher import FetchJob
from beiran.fetch.peer_source import PeerSource
from beiran.handlers import BaseHandler
from beiran.serve import serve_blob
from beiran_testkit.instore import store_context

SIZE = (1 << 20) + 4321  # a .deb: over a MiB, not a multiple of the block size


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def blob(n: int, seed: int) -> bytes:
    return hashlib.sha256(str(seed).encode()).digest() * (n // 32) + b"x" * (n % 32)


class PeerBlobs(tornado.web.RequestHandler):
    """The peer: sends what the test put under the digest (right or wrong bytes), optionally in
    two halves with a pause between them."""

    async def get(self, digest: str) -> None:
        body, pause = self.settings["blobs"][digest]
        self.set_header("Content-Length", str(len(body)))
        if pause:
            self.write(body[:len(body) // 2])
            await self.flush()
            await asyncio.sleep(pause)
            body = body[len(body) // 2:]
        self.write(body)


class Serve(BaseHandler):
    access = Access.PUBLIC

    async def get(self, digest: str) -> None:
        await serve_blob(self, digest, fetch=False)


class Stub:
    """What PeerSource reaches besides the store: the peer's address, no auth, progress."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.accounted = 0

    def url_of(self, node: str) -> str:
        return self.base

    def headers(self, method: str, target: str) -> dict[str, str]:
        return {}

    def account(self, job: Any, source: str, n: int) -> None:
        self.accounted += n


class WholeReceiveTest(AsyncHTTPTestCase):
    def get_app(self) -> tornado.web.Application:
        tmp = self._tmp = tempfile.mkdtemp(prefix="beiran-whole-")
        ctx, store = store_context(self.io_loop, tmp, fsync=True)
        self.ctx, self.store = ctx, store
        self.blobs: dict[str, tuple[bytes, float]] = {}
        return tornado.web.Application([(r"/blobs/(.+)", PeerBlobs), (r"/serve/(.+)", Serve)],
                                       blobs=self.blobs, ctx=ctx)

    def setUp(self) -> None:
        super().setUp()
        self.stub = Stub(self.get_url("").rstrip("/"))
        self.ctx.peers = self.stub  # type: ignore[assignment]
        self.ctx.auth = self.stub  # type: ignore[assignment]
        self.ctx.fetcher = self.stub  # type: ignore[assignment]
        self.source = PeerSource(self.ctx)
        self.submits: dict[str, int] = {"io": 0, "receive": 0, "db": 0}
        for name, pool in (("io", self.ctx.io_executor), ("receive", self.ctx.receive_executor),
                           ("db", self.ctx.db_executor)):
            real = pool.submit

            def counted(*a: Any, _real: Any = real, _name: str = name, **kw: Any) -> Any:
                self.submits[_name] += 1
                return _real(*a, **kw)
            pool.submit = counted  # type: ignore[method-assign]

    def tearDown(self) -> None:
        super().tearDown()
        shutil.rmtree(self._tmp, ignore_errors=True)

    async def receive(self, data: bytes, digest: str | None = None, pause: float = 0.0) -> FetchJob:
        digest = digest or sha(data)
        self.blobs[digest] = (data, pause)
        job = FetchJob(digest, len(data), None)
        job.writer = await self.store.begin_write(digest, len(data), reserve=True)
        self.submits.update(io=0, receive=0, db=0)  # counted from here (room is looked up once a second)
        loop = asyncio.get_running_loop()
        real = loop.call_soon_threadsafe
        self.wakeups = 0

        def counted(*a: Any, **kw: Any) -> Any:
            self.wakeups += 1
            return real(*a, **kw)
        loop.call_soon_threadsafe = counted  # type: ignore[method-assign]
        try:
            await self.source.stream_into(job, "peer1", 0)
        finally:
            del loop.call_soon_threadsafe  # the class's own again
        return job

    @gen_test(timeout=30)
    async def test_small_blob_is_verified_synced_and_stored_in_one_thread_hop(self):
        data = blob(SIZE, 1)
        real_sync, real_replace = os.fdatasync, os.replace
        order: list[tuple[str, str, int]] = []

        def spy_sync(fd: int) -> None:
            order.append(("sync", os.readlink(f"/proc/self/fd/{fd}"), threading.get_ident()))
            real_sync(fd)

        def spy_replace(a: Any, b: Any) -> None:
            real_replace(a, b)  # (a first try fails when the blob's directory is new)
            order.append(("replace", str(a), threading.get_ident()))

        os.fdatasync, os.replace = spy_sync, spy_replace  # type: ignore[assignment]
        try:
            job = await self.receive(data)
        finally:
            os.fdatasync, os.replace = real_sync, real_replace  # type: ignore[assignment]
        writer = job.live_writer()
        final = self.store.path_for(job.digest)
        # sealed on the receiving thread: durable, then renamed, before the loop heard of it
        assert final.read_bytes() == data
        assert [k for k, _, _ in order] == ["sync", "replace"]
        assert order[0][1] == str(writer.tmp_path) and order[1][1] == str(writer.tmp_path)
        assert order[0][2] == order[1][2] != threading.get_ident()
        assert self.submits == {"io": 0, "receive": 1, "db": 0}
        assert self.wakeups == 1  # the receive thread's answer; no wake-up per batch besides
        assert self.stub.accounted == len(data) and writer.available == len(data)
        entry = await self.store.commit(writer)
        # no further I/O hop for the seal, and its row is written behind (with the next ones)
        assert self.submits == {"io": 0, "receive": 1, "db": 0}
        await self.store.db_batch.flush()
        assert self.submits == {"io": 0, "receive": 1, "db": 1}
        assert entry.size == len(data) and self.store.has(job.digest)
        assert list((Path(self._tmp) / "blobs" / "tmp").iterdir()) == []
        resp = await self.http_client.fetch(self.get_url(f"/serve/{job.digest}"))
        assert resp.body == data

    @gen_test(timeout=30)
    async def test_wrong_bytes_are_never_synced_renamed_or_kept_in_memory(self):
        good, evil = blob(SIZE, 2), blob(SIZE, 3)
        renamed: list[str] = []
        real_replace = os.replace

        def spy_replace(a: Any, b: Any) -> None:
            renamed.append(str(b))  # tried at all
            real_replace(a, b)

        os.replace = spy_replace  # type: ignore[assignment]
        try:
            job = await self.receive(evil, digest=sha(good))
        finally:
            os.replace = real_replace  # type: ignore[assignment]
        writer = job.live_writer()
        assert renamed == [] and not self.store.path_for(sha(good)).exists()
        try:
            await self.store.commit(writer)
            raise AssertionError("a blob with the wrong bytes was committed")
        except VerificationError:
            pass
        assert not self.store.has(sha(good))
        assert not self.store.path_for(sha(good)).exists()
        assert list((Path(self._tmp) / "blobs" / "tmp").iterdir()) == []

    @gen_test(timeout=30)
    async def test_a_slow_peer_is_written_batch_by_batch_so_readers_see_progress(self):
        data = blob(SIZE, 4)
        seen: list[int] = []
        peer_source.WHOLE_WAIT, saved = 0.05, peer_source.WHOLE_WAIT
        try:
            task = asyncio.ensure_future(self.receive(data, pause=0.5))
            while not task.done():
                writer = self.store.writing(sha(data))
                if writer is not None:
                    seen.append(writer.available)
                await asyncio.sleep(0.02)
            job = await task
        finally:
            peer_source.WHOLE_WAIT = saved
        assert any(0 < n < len(data) for n in seen), seen  # the first half was readable early
        assert self.wakeups > 1 and self.stub.accounted == len(data)
        await self.store.commit(job.live_writer())
        assert self.store.path_for(job.digest).read_bytes() == data


    @gen_test(timeout=30)
    async def test_a_disk_error_while_sealing_on_the_receive_thread_is_retried_not_blamed_on_the_peer(self):
        data = blob(SIZE, 6)
        real_replace = os.replace
        calls: list[str] = []

        def flaky_replace(a: Any, b: Any) -> None:
            calls.append(str(b))
            if len(calls) == 1:
                raise OSError(5, "Input/output error")
            real_replace(a, b)

        os.replace = flaky_replace  # type: ignore[assignment]
        try:
            job = await self.receive(data)
            assert not self.store.path_for(job.digest).exists()  # not sealed on the receive thread
            await self.store.commit(job.live_writer())  # sealed again, on an I/O thread
        finally:
            os.replace = real_replace  # type: ignore[assignment]
        assert self.store.path_for(job.digest).read_bytes() == data and self.store.has(job.digest)
        assert job.bad == set() and len(calls) >= 2
