"""The serving primitive in-process (Tornado's AsyncHTTPTestCase): ranges, 416, the hold-back of a
download's last bytes until it verified, bodies that fail arriving short, and clients that go away.
Both ways a body leaves are covered: sendfile(2) (>= 1 MiB) and Tornado's own writes."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import shutil
import socket
import tempfile
import time

from tornado.simple_httpclient import HTTPStreamClosedError
from tornado.testing import AsyncHTTPTestCase, gen_test
from tornado.web import Application

from beiran.access import Access
from beiran.errors import UpstreamError
from beiran.handlers import BaseHandler
from beiran.serve import SENDFILE_MIN, serve_blob
from beiran_testkit.instore import StreamingClient, store_context

SMALL = 100_000  # served through Tornado
LARGE = 3 * SENDFILE_MIN  # served with sendfile


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def blob(n: int, seed: int = 0) -> bytes:
    return hashlib.sha256(str(seed).encode()).digest() * (n // 32) + b"x" * (n % 32)


class ServeHandler(BaseHandler):
    access = Access.PUBLIC

    async def get(self, digest: str) -> None:
        await self._serve(digest)

    async def head(self, digest: str) -> None:
        await self._serve(digest, head=True)

    async def _serve(self, digest: str, head: bool = False) -> None:
        q = self.get_query_argument
        await serve_blob(self, digest, fetch=False, head=head, hold=int(q("hold", "1")),
                         end_short=q("short", "") == "1", ranges=q("ranges", "strict"),
                         to_peer=q("peer", "") == "1")


class ServeTest(StreamingClient, AsyncHTTPTestCase):
    def get_app(self) -> Application:
        tmp = self._tmp = tempfile.mkdtemp(prefix="beiran-serve-")
        ctx, store = store_context(self.io_loop, tmp, fsync=False)
        self.ctx, self.store = ctx, store
        return Application([(r"/b/(.+)", ServeHandler)], ctx=ctx)

    def tearDown(self) -> None:
        super().tearDown()
        shutil.rmtree(self._tmp, ignore_errors=True)

    async def stored(self, data: bytes) -> str:
        w = await self.store.begin_write(sha(data), len(data), reserve=True)
        await w.write_at(0, data)
        await self.store.commit(w)
        return sha(data)

    async def get(self, path: str, **headers: str):
        return await self.http_client.fetch(self.get_url(path), headers=headers, raise_error=False)

    async def outcome(self, fut: asyncio.Future) -> int | str:
        """The response's status, or "cut" when the connection closed mid-body."""
        try:
            return (await fut).code
        except HTTPStreamClosedError:
            return "cut"


    # -- complete blobs ------------------------------------------------------------------------
    @gen_test(timeout=20)
    async def test_complete_blob_whole_and_one_range(self):
        for data in (blob(SMALL, 1), blob(LARGE, 2)):
            d = await self.stored(data)
            r = await self.get(f"/b/{d}")
            assert r.code == 200 and r.body == data and r.headers["Accept-Ranges"] == "bytes"
            r = await self.get(f"/b/{d}", Range="bytes=10-19")
            assert r.code == 206 and r.body == data[10:20]
            assert r.headers["Content-Range"] == f"bytes 10-19/{len(data)}"
            r = await self.get(f"/b/{d}", Range="bytes=-5")
            assert r.code == 206 and r.body == data[-5:]
            r = await self.get(f"/b/{d}", Range="bytes=1000-")
            assert r.code == 206 and r.body == data[1000:]
            r = await self.get(f"/b/{d}", Range=f"bytes=5-{len(data) * 2}")
            assert r.code == 206 and r.body == data[5:]
            r = await self.http_client.fetch(self.get_url(f"/b/{d}"), method="HEAD", raise_error=False)
            assert r.code == 200 and r.headers["Content-Length"] == str(len(data)) and r.body == b""

    @gen_test(timeout=20)
    async def test_unsatisfiable_or_multiple_ranges_are_416_or_ignored_when_lenient(self):
        data = blob(1000, 3)
        d = await self.stored(data)
        for rng in ("bytes=1000-", "bytes=5-2", "bytes=0-1,5-6", "items=0-1", "bytes=-0"):
            r = await self.get(f"/b/{d}", Range=rng)
            assert r.code == 416, (rng, r.code)
            assert r.headers["Content-Range"] == "bytes */1000" and data not in r.body
            r = await self.get(f"/b/{d}?ranges=lenient", Range=rng)
            assert r.code == 200 and r.body == data
        r = await self.get(f"/b/{d}?ranges=off", Range="bytes=0-1")
        assert r.code == 200 and r.body == data and "Accept-Ranges" not in r.headers

    # -- downloads -----------------------------------------------------------------------------
    async def _download_then(self, data: bytes, digest: str, path_query: str):
        """Serve a download: every byte arrives, and only then is it verified (or not)."""
        w = await self.store.begin_write(digest, len(data), reserve=True)
        fut, got = self.streaming(f"/b/{digest}{path_query}")
        third = len(data) // 3
        await w.write_at(0, data[:third])
        await asyncio.sleep(0.05)
        await w.write_at(third, data[third:2 * third])
        await self.until(lambda: len(got) > 0, "the first bytes to reach the client")
        await w.write_at(2 * third, data[2 * third:])
        return w, fut, got

    @gen_test(timeout=30)
    async def test_download_is_held_back_until_verified(self):
        for size in (SMALL, LARGE):
            data = blob(size, 4)
            d = sha(data)
            w, fut, got = await self._download_then(data, d, "?hold=1000")
            # every byte is on disk, none verified: the client has all but the held tail
            await asyncio.sleep(0.2)
            assert not fut.done() and len(got) < size
            await self.store.commit(w)
            r = await fut
            assert r.code == 200 and bytes(got) == data, (size, r.code, len(got))

    @gen_test(timeout=30)
    async def test_download_that_fails_verification_arrives_short(self):
        for size in (SMALL, LARGE):
            data = blob(size, 5)
            evil = data[:-1] + b"!"
            d = sha(data)
            w, fut, got = await self._download_then(evil, d, "")
            try:
                await self.store.commit(w)
            except Exception:  # noqa: BLE001 - VerificationError: the point of the test
                pass
            assert await self.outcome(fut) == "cut"  # never a complete body
            assert 0 < len(got) < size and bytes(got) == evil[:len(got)]

    @gen_test(timeout=30)
    async def test_source_failing_mid_stream_cuts_the_body(self):
        data = blob(LARGE, 6)
        d = sha(data)
        w = await self.store.begin_write(d, len(data), reserve=True)
        fut, got = self.streaming(f"/b/{d}")
        await w.write_at(0, data[:SENDFILE_MIN])
        await self.until(lambda: len(got) == SENDFILE_MIN, "the first MiB")
        self.store.abort(w, UpstreamError("origin went away"))
        assert await self.outcome(fut) == "cut" and bytes(got) == data[:SENDFILE_MIN]

    @gen_test(timeout=30)
    async def test_small_download_held_whole_fails_as_an_error_not_a_body(self):
        data = blob(SMALL, 7)
        d = sha(data)
        w = await self.store.begin_write(d, len(data), reserve=True)
        fut, got = self.streaming(f"/b/{d}?hold={2 * SMALL}&short=1")
        await w.write_at(0, data[:-1] + b"!")
        await asyncio.sleep(0.1)
        assert len(got) == 0  # nothing leaves before verification
        try:
            await self.store.commit(w)
        except Exception:  # noqa: BLE001
            pass
        r = await fut
        assert r.code == 502 and got.startswith(b"{") and data[:100] not in got

    @gen_test(timeout=30)
    async def test_end_short_failure_ends_the_chunked_body_cleanly_without_the_tail(self):
        data = blob(SMALL * 4, 8)
        d = sha(data)
        w, fut, got = await self._download_then(data[:-1] + b"!", d, "?hold=1000&short=1")
        try:
            await self.store.commit(w)
        except Exception:  # noqa: BLE001
            pass
        r = await fut
        assert r.code == 200 and "Content-Length" not in r.headers
        assert 0 < len(got) < len(data) and bytes(got) == data[:len(got)]

    @gen_test(timeout=30)
    async def test_download_of_unknown_size_verifies_and_completes(self):
        data = blob(SMALL, 9)
        d = sha(data)
        w = await self.store.begin_write(d, None, reserve=True)
        fut, got = self.streaming(f"/b/{d}")
        await w.write_at(0, data)
        await asyncio.sleep(0.1)
        assert not fut.done()
        await self.store.commit(w)
        r = await fut
        assert r.code == 200 and bytes(got) == data

    @gen_test(timeout=30)
    async def test_peers_get_downloading_state_and_nothing_of_a_failed_source(self):
        data = blob(SMALL, 10)
        d = sha(data)
        w = await self.store.begin_write(d, len(data), reserve=True)
        await w.write_at(0, data[:1000])
        r = await self.http_client.fetch(self.get_url(f"/b/{d}?peer=1"), method="HEAD", raise_error=False)
        assert r.code == 200 and r.headers["X-Beiran-State"] == "downloading"
        w.untrusted = True  # a source failed part-way: its bytes stay in the file until verified
        r = await self.get(f"/b/{d}?peer=1")
        assert r.code == 404 and data[:1000] not in r.body
        await w.write_at(1000, data[1000:])
        await self.store.commit(w)
        r = await self.get(f"/b/{d}?peer=1")
        assert r.code == 200 and r.body == data and r.headers["X-Beiran-State"] == "complete"

    @gen_test(timeout=30)
    async def test_client_gone_mid_stream_releases_the_blob(self):
        for size in (SMALL * 8, LARGE):
            data = blob(size, 11)
            d = sha(data)
            w = await self.store.begin_write(d, len(data), reserve=True)
            await w.write_at(0, data[: size // 2])
            sock = socket.create_connection(("127.0.0.1", self.get_http_port()))
            sock.sendall(f"GET /b/{d} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            await self.until(lambda d=d: self.store._in_use.get(d), "the request to start")
            sock.close()
            await w.write_at(size // 2, data[size // 2:])
            await self.store.commit(w)
            await self.until(lambda d=d: not self.store._in_use.get(d), "the server to let go")
            await self.store.remove(d)  # not held by a dead request
            r = await self.get("/b/" + d)
            assert r.code == 404

    @gen_test(timeout=30)
    async def test_large_bodies_leave_over_one_kept_alive_connection(self):
        """sendfile(2) bodies (a stored blob, one still downloading) keep the HTTP/1.1 connection:
        a peer or apt fetching many blobs pays one handshake, not one per blob."""
        accepted = []
        handle_stream = self.http_server.handle_stream

        def counting(stream, address):
            accepted.append(address)
            return handle_stream(stream, address)

        self.http_server.handle_stream = counting
        a, b = blob(LARGE, 12), blob(LARGE + 5, 13)
        da, db = await self.stored(a), sha(b)
        w = await self.store.begin_write(db, len(b), reserve=True)
        await w.write_at(0, b[:SENDFILE_MIN])

        def client() -> list[tuple[int, bytes, bool]]:
            conn = http.client.HTTPConnection("127.0.0.1", self.get_http_port(), timeout=20)
            out = []
            try:
                for d in (da, db, da):
                    conn.request("GET", f"/b/{d}")
                    r = conn.getresponse()
                    out.append((r.status, r.read(), r.will_close))
            finally:
                conn.close()
            return out

        fut = asyncio.get_running_loop().run_in_executor(None, client)
        await self.until(lambda: self.store._in_use.get(db), "the downloading blob's request")
        await w.write_at(SENDFILE_MIN, b[SENDFILE_MIN:])
        await self.store.commit(w)
        got = await fut
        assert [(s, body == want, close) for (s, body, close), want in zip(got, (a, b, a), strict=True)] == [
            (200, True, False)] * 3
        assert len(accepted) == 1  # one TCP connection carried all three

    @gen_test(timeout=30)
    async def test_stored_blob_sent_by_the_loop_waits_for_a_slow_client(self):
        """A stored blob goes out by non-blocking sendfile(2) from the event loop: a client that
        reads slowly fills the socket, and the rest follows as it drains (not lost, not blocking)."""
        from beiran.serve import LOOP_SENDFILE_MAX
        data = blob(LOOP_SENDFILE_MAX, 14)
        d = await self.stored(data)

        def slow_client() -> bytes:
            sock = socket.create_connection(("127.0.0.1", self.get_http_port()), timeout=20)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
            sock.sendall(f"GET /b/{d} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            got = bytearray()
            while b"\r\n\r\n" not in got:
                got += sock.recv(4096)
            head, _, body = bytes(got).partition(b"\r\n\r\n")
            out = bytearray(body)
            time.sleep(0.3)  # the server's socket buffer fills meanwhile
            while len(out) < len(data):
                chunk = sock.recv(256 << 10)
                if not chunk:
                    break
                out += chunk
                time.sleep(0.002)
            sock.close()
            assert head.startswith(b"HTTP/1.1 200"), head
            return bytes(out)

        got = await asyncio.get_running_loop().run_in_executor(None, slow_client)
        assert len(got) == len(data) and got == data
