"""A large receive written past the page cache (BlobWriter.write_direct_blocking, as the peer
receive thread does) and read back the same way by the serving primitive: bytes equal at any
offset and batch size, held back until verified while growing, cut (never complete) when they do
not verify, and served whole once stored."""

from __future__ import annotations

import asyncio
import hashlib
import mmap
import shutil
import tempfile

from tornado.simple_httpclient import HTTPStreamClosedError
from tornado.testing import AsyncHTTPTestCase, gen_test
from tornado.web import Application

from beiran.access import Access
from beiran.handlers import BaseHandler
from beiran.serve import serve_blob
from beiran.store.writer import ALIGN
from beiran_testkit.instore import StreamingClient, store_context

SIZE = 5 * (1 << 20) + 12345  # several batches, an unaligned end


def blob(n: int, seed: int) -> bytes:
    return hashlib.sha256(str(seed).encode()).digest() * (n // 32) + b"y" * (n % 32)


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Handler(BaseHandler):
    access = Access.PUBLIC

    async def get(self, digest: str) -> None:
        await serve_blob(self, digest, fetch=False, hold=int(self.get_query_argument("hold", "1")))


class DirectReceiveTest(StreamingClient, AsyncHTTPTestCase):
    def get_app(self) -> Application:
        self._tmp = tempfile.mkdtemp(prefix="beiran-direct-", dir="/var/tmp")  # a disk, not tmpfs
        self.ctx, self.store = store_context(self.io_loop, self._tmp, fsync=False)
        return Application([(r"/b/(.+)", Handler)], ctx=self.ctx)

    def tearDown(self) -> None:
        super().tearDown()
        shutil.rmtree(self._tmp, ignore_errors=True)

    async def write(self, w, data: bytes, start: int, end: int, step: int) -> None:
        """Bytes [start, end) in batches of `step`, each placed in a page-aligned buffer at its
        file offset modulo ALIGN, as the receive thread places them."""
        space = mmap.mmap(-1, step + ALIGN)
        view = memoryview(space)
        loop = asyncio.get_running_loop()
        pos = start
        while pos < end:
            n = min(step, end - pos)
            shift = pos % ALIGN
            view[shift:shift + n] = data[pos:pos + n]
            await loop.run_in_executor(None, w.write_direct_blocking, pos, view[shift:shift + n])
            w.notify_growth()
            pos += n
        view.release()

    @gen_test(timeout=30)
    async def test_unaligned_batches_are_stored_exactly_and_served_while_growing(self):
        data = blob(SIZE, 1)
        d = sha(data)
        w = await self.store.begin_write(d, len(data), reserve=True)
        fut, got = self.streaming(f"/b/{d}?hold=1000")
        # aligned batches, then odd ones (a slow peer's partial batches), then aligned again
        await self.write(w, data, 0, 2 << 20, 1 << 20)
        await self.until(lambda: len(got) > 0, "the first bytes to reach the client")
        await self.write(w, data, 2 << 20, (2 << 20) + 3 * 7777, 7777)
        await self.write(w, data, (2 << 20) + 3 * 7777, SIZE, 1 << 20)
        assert w.direct  # the whole pages went past the page cache
        await asyncio.sleep(0.2)
        assert not fut.done() and len(got) <= SIZE - 1000  # the held tail waits for verification
        await self.store.commit(w)
        r = await fut
        assert r.code == 200 and bytes(got) == data
        entry = self.store.entries[d]
        assert entry.uncached
        with open(self.store.file_of(entry), "rb") as f:
            assert f.read() == data
        r = await self.http_client.fetch(self.get_url(f"/b/{d}"), raise_error=False)  # stored: read so too
        assert r.code == 200 and r.body == data
        r = await self.http_client.fetch(self.get_url(f"/b/{d}"), headers={"Range": "bytes=4097-5000000"},
                                         raise_error=False)
        assert r.code == 206 and r.body == data[4097:5000001]

    @gen_test(timeout=30)
    async def test_a_direct_written_body_that_fails_verification_arrives_cut(self):
        data = blob(SIZE, 2)
        evil = data[:-1] + b"!"
        d = sha(data)
        w = await self.store.begin_write(d, len(data), reserve=True)
        fut, got = self.streaming(f"/b/{d}")
        await self.write(w, evil, 0, SIZE, 1 << 20)
        try:
            await self.store.commit(w)
        except Exception:  # noqa: BLE001 - VerificationError: the point of the test
            pass
        try:
            r = await fut
            outcome = r.code
        except HTTPStreamClosedError:
            outcome = "cut"
        assert outcome == "cut"  # never a complete body
        assert 0 < len(got) < SIZE and bytes(got) == evil[:len(got)]
        assert d not in self.store.entries
