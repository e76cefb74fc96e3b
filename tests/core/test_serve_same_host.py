"""A large body for a client on this host is copied, not sendfile(2)'d (beiran.serve.same_host):
over loopback, sendfile hands our page-cache pages to the client's socket and a client reading in
small pieces pays for it (skopeo: ~0.15 s more CPU per 256 MiB). Peers and clients across a NIC
keep sendfile."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import os
import shutil
import tempfile
from unittest import mock

from tornado.testing import AsyncHTTPTestCase, gen_test
from tornado.web import Application

from beiran import serve
from beiran.access import Access
from beiran.handlers import BaseHandler
from beiran.serve import LOOP_SENDFILE_MAX, SMALL_DOWNLOAD, same_host, serve_blob
from beiran_testkit.instore import store_context


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def blob(n: int, seed: int) -> bytes:
    return hashlib.sha256(str(seed).encode()).digest() * (n // 32) + b"y" * (n % 32)


class Handler(BaseHandler):
    access = Access.PUBLIC

    async def get(self, digest: str) -> None:
        await serve_blob(self, digest, fetch=False, to_peer=self.get_query_argument("peer", "") == "1")


class SameHostTest(AsyncHTTPTestCase):
    def get_app(self) -> Application:
        tmp = self._tmp = tempfile.mkdtemp(prefix="beiran-samehost-")
        self.ctx, self.store = store_context(self.io_loop, tmp, fsync=False)
        return Application([(r"/b/(.+)", Handler)], ctx=self.ctx)

    def tearDown(self) -> None:
        super().tearDown()
        shutil.rmtree(self._tmp, ignore_errors=True)

    async def _bodies(self, query: str = "") -> tuple[list[tuple[int, bytes]], list[bytes], int]:
        """A stored blob past the loop's own sendfile size and a download past the small-download
        size, fetched by a real HTTP client on loopback: (answers, wanted bodies, sendfile calls)."""
        stored, growing = blob(LOOP_SENDFILE_MAX + 4096, 1), blob(SMALL_DOWNLOAD + (1 << 20), 2)
        w = await self.store.begin_write(sha(stored), len(stored), reserve=True)
        await w.write_at(0, stored)
        await self.store.commit(w)
        w = await self.store.begin_write(sha(growing), len(growing), reserve=True)
        await w.write_at(0, growing[:1 << 20])

        def client() -> list[tuple[int, bytes]]:
            conn = http.client.HTTPConnection("127.0.0.1", self.get_http_port(), timeout=20)
            try:
                out = []
                for d in (sha(stored), sha(growing)):
                    conn.request("GET", f"/b/{d}{query}")
                    r = conn.getresponse()
                    out.append((r.status, r.read()))
                return out
            finally:
                conn.close()

        real = os.sendfile
        calls = []

        def counting(*args: int) -> int:
            calls.append(args[3])
            return real(*args)

        with mock.patch.object(os, "sendfile", counting):
            fut = asyncio.get_running_loop().run_in_executor(None, client)
            for _ in range(2000):  # the download's reader has started streaming it
                if self.store._in_use.get(sha(growing)):
                    break
                await asyncio.sleep(0.005)
            await w.write_at(1 << 20, growing[1 << 20:])
            await self.store.commit(w)
            got = await fut
        return got, [stored, growing], len(calls)

    @gen_test(timeout=30)
    async def test_loopback_client_gets_copied_bodies_not_sendfile(self):
        got, want, sendfiles = await self._bodies()
        assert [(s, b == w) for (s, b), w in zip(got, want, strict=True)] == [(200, True)] * 2
        assert sendfiles == 0

    @gen_test(timeout=30)
    async def test_client_on_another_host_keeps_sendfile(self):
        with mock.patch.object(serve, "same_host", lambda sock: False):
            got, want, sendfiles = await self._bodies()
        assert [(s, b == w) for (s, b), w in zip(got, want, strict=True)] == [(200, True)] * 2
        assert sendfiles > 0


    @gen_test(timeout=30)
    async def test_peer_on_this_host_keeps_sendfile(self):
        """A peer reads in 1 MiB pieces and gains little from a copy; across a NIC it gains nothing."""
        got, want, sendfiles = await self._bodies("?peer=1")
        assert [(s, b == w) for (s, b), w in zip(got, want, strict=True)] == [(200, True)] * 2
        assert sendfiles > 0


def test_same_host_addresses():
    """Loopback (v4, v6, v4-mapped) and our own address are this host; another address is not."""
    class Sock:
        def __init__(self, peer: str, local: str) -> None:
            self.peer, self.local = peer, local

        def getpeername(self):
            return (self.peer, 1234)

        def getsockname(self):
            return (self.local, 80)

    assert same_host(Sock("127.0.0.1", "127.0.0.1"))
    assert same_host(Sock("127.9.8.7", "127.0.0.1"))
    assert same_host(Sock("::1", "::1"))
    assert same_host(Sock("::ffff:127.0.0.1", "::ffff:127.0.0.1"))
    assert same_host(Sock("10.1.2.3", "10.1.2.3"))
    assert not same_host(Sock("10.1.2.4", "10.1.2.3"))
    assert not same_host(Sock("fe80::1%eth0", "fe80::2%eth0"))
    assert not same_host(None)
