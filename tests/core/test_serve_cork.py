"""A sendfile(2)'d answer's headers leave with its body's first bytes: the socket is corked before
the headers are written, not after (issue 16, speed). Written on their own, the headers woke the
client (a peer's receive thread, apt) for a head without a body, and on a busy host the woken
reader took the CPU from the sender in mid-answer: ~1 ms of n1's event loop per small blob.
The kernel's own TCP_CORK state is read at the moment Tornado writes the headers."""

from __future__ import annotations

import hashlib
import http.client
import shutil
import socket
import tempfile
from unittest import mock

from tornado.iostream import IOStream
from tornado.testing import AsyncHTTPTestCase, gen_test
from tornado.web import Application

from beiran.access import Access
from beiran.handlers import BaseHandler
from beiran.serve import SENDFILE_MIN, serve_blob
from beiran_testkit.instore import store_context


class Handler(BaseHandler):
    access = Access.PUBLIC

    async def get(self, digest: str) -> None:
        await serve_blob(self, digest, fetch=False, to_peer=self.get_query_argument("peer", "") == "1")


class CorkTest(AsyncHTTPTestCase):
    def get_app(self) -> Application:
        tmp = self._tmp = tempfile.mkdtemp(prefix="beiran-cork-")
        self.ctx, self.store = store_context(self.io_loop, tmp, fsync=False)
        return Application([(r"/b/(.+)", Handler)], ctx=self.ctx)

    def tearDown(self) -> None:
        super().tearDown()
        shutil.rmtree(self._tmp, ignore_errors=True)

    @gen_test(timeout=30)
    async def test_headers_are_written_to_a_corked_socket(self):
        data = hashlib.sha256(b"cork").digest() * (SENDFILE_MIN // 32 + 100)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        w = await self.store.begin_write(digest, len(data), reserve=True)
        await w.write_at(0, data)
        await self.store.commit(w)

        corked_at_head: list[int] = []
        real = IOStream.write_to_fd

        def recording(stream: IOStream, buf: memoryview) -> int:
            if bytes(buf[:5]) == b"HTTP/":  # the answer's head
                corked_at_head.append(stream.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK))
            return real(stream, buf)

        def client(query: str) -> tuple[int, bytes]:
            conn = http.client.HTTPConnection("127.0.0.1", self.get_http_port(), timeout=20)
            try:
                conn.request("GET", f"/b/{digest}{query}")
                r = conn.getresponse()
                return r.status, r.read()
            finally:
                conn.close()

        with mock.patch.object(IOStream, "write_to_fd", recording):
            for query in ("", "?peer=1"):  # a package client's answer and a peer's
                status, body = await self.io_loop.run_in_executor(None, client, query)
                assert status == 200 and body == data
        assert corked_at_head == [1, 1]
