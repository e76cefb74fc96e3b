"""Kept-alive origin connections (beiran/origin_connections.py through httpstream.stream_request):
real HTTP servers on loopback that count the TCP connections they accept."""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from beiran import origin_connections, proxies
from beiran.errors import UpstreamError
from beiran.httpstream import stream_request
from beiran_testkit.pki import make_ca

BIG = 32 << 20  # far more than the response buffer and the socket buffers hold


class CountingOrigin:
    """HTTP/1.1 with keep-alive; counts accepted connections and requests. Knobs: answer with
    `Connection: close`, close a connection instead of answering its Nth request (an idle-close
    race as the client sees it), drop idle connections after `idle_timeout`, chunked bodies."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.connections = 0
        self.closed = 0  # connections the server has finished with
        self.requests: list[tuple[int, str, str, str]] = []  # (connection no., method, path, Connection)
        self.connection_close = False
        self.drop_request_no: int | None = None  # on a connection's Nth request: close, no answer
        self.keep_alive_header: str | None = None
        self.idle_timeout: float | None = None
        self.lock = threading.Lock()
        origin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                if origin.idle_timeout:
                    self.connection.settimeout(origin.idle_timeout)
                with origin.lock:
                    origin.connections += 1
                    self.conn_no = origin.connections
                self.served = 0

            def log_message(self, *args: object) -> None:
                pass

            def finish(self) -> None:
                super().finish()
                with origin.lock:
                    origin.closed += 1

            def _answer(self, body: bytes) -> None:
                self.served += 1
                with origin.lock:
                    origin.requests.append((self.conn_no, self.command, self.path,
                                            self.headers.get("Connection") or ""))
                if origin.drop_request_no == self.served:
                    self.close_connection = True
                    return
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                self.send_response(200)
                if self.path.startswith("/chunked"):
                    self.send_header("Transfer-Encoding", "chunked")
                else:
                    self.send_header("Content-Length", str(len(body)))
                if origin.connection_close:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                if origin.keep_alive_header:
                    self.send_header("Keep-Alive", origin.keep_alive_header)
                self.end_headers()
                if self.command == "HEAD":
                    return
                try:
                    if self.path.startswith("/chunked"):
                        for i in range(0, len(body), 1000):
                            piece = body[i:i + 1000]
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                        self.wfile.write(b"0\r\n\r\n")
                    else:
                        self.wfile.write(body)
                except OSError:
                    self.close_connection = True

            def do_GET(self) -> None:
                self._answer(b"x" * BIG if self.path.startswith("/big") else self.path.encode() * 100)

            do_HEAD = do_GET

            def do_POST(self) -> None:
                self._answer(b"posted")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def origin():
    o = CountingOrigin()
    yield o
    o.stop()


async def get(url: str, origin: bool = True, read: bool = True, **kw: Any) -> bytes:
    async with stream_request(url, origin=origin, **kw) as resp:
        assert resp.code == 200
        return await resp.read_all(BIG + 1) if read else b""


def run(coro: Any) -> Any:
    async def main() -> Any:
        try:
            return await coro
        finally:
            origin_connections.pool().close()
    return asyncio.run(main())


def test_n_requests_to_an_origin_ride_one_connection(origin):
    async def go() -> None:
        for i in range(5):
            assert await get(f"{origin.url}/f{i}") == f"/f{i}".encode() * 100
        await get(f"{origin.url}/chunked")  # a chunked body read to its end leaves the connection usable
        async with stream_request(f"{origin.url}/h", method="HEAD", origin=True) as resp:
            assert resp.code == 200
        assert await get(f"{origin.url}/last") == b"/last" * 100
        assert origin_connections.pool().idle_count() == 1
    run(go())
    assert origin.connections == 1
    assert len(origin.requests) == 8
    assert all(c != "close" for _, _, _, c in origin.requests), "origin requests must not ask to close"


def test_peer_requests_never_use_the_pool(origin):
    async def go() -> None:
        await get(f"{origin.url}/o")  # an origin connection is kept idle...
        for i in range(3):  # ...and peer requests to the same address neither take it nor leave theirs
            await get(f"{origin.url}/p{i}", origin=False)
        assert origin_connections.pool().idle_count() == 1
    run(go())
    assert origin.connections == 4
    assert [c for _, _, p, c in origin.requests if p.startswith("/p")] == ["close"] * 3


def test_an_origin_that_closed_an_idle_connection_is_asked_again_on_a_new_one(origin):
    origin.drop_request_no = 2  # the 2nd request on a connection: the origin closes it unanswered

    async def go() -> None:
        assert await get(f"{origin.url}/a") == b"/a" * 100
        assert await get(f"{origin.url}/b") == b"/b" * 100  # retried once, on a fresh connection
    run(go())
    assert origin.connections == 2
    assert [(n, p) for n, _, p, _ in origin.requests] == [(1, "/a"), (1, "/b"), (2, "/b")]


def test_a_non_idempotent_request_never_rides_a_kept_connection(origin):
    origin.drop_request_no = 2

    async def go() -> None:
        await get(f"{origin.url}/a")
        async with stream_request(f"{origin.url}/form", method="POST", body=b"x=1", origin=True) as resp:
            assert resp.code == 200 and await resp.read_all(100) == b"posted"
    run(go())
    assert [(n, m) for n, m, _, _ in origin.requests] == [(1, "GET"), (2, "POST")]


def test_a_fresh_connection_closed_before_an_answer_is_an_error_not_a_retry(origin):
    origin.drop_request_no = 1

    async def go() -> None:
        with pytest.raises(UpstreamError, match="closed before a response"):
            await asyncio.wait_for(get(f"{origin.url}/a"), 10)
    run(go())
    assert origin.connections == 1 and len(origin.requests) == 1


def test_an_idle_connection_the_origin_timed_out_is_not_reused(origin):
    origin.idle_timeout = 0.2  # the server drops a connection idle this long

    async def go() -> None:
        await get(f"{origin.url}/a")
        deadline = time.monotonic() + 10
        while not origin.closed and time.monotonic() < deadline:  # the server dropped it
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.05)  # ...and its FIN has reached this end
        assert await get(f"{origin.url}/b") == b"/b" * 100
    run(go())
    assert origin.connections == 2
    assert [(n, p) for n, _, p, _ in origin.requests] == [(1, "/a"), (2, "/b")]  # seen closed: not sent


def test_a_response_not_read_to_its_end_leaves_its_connection_unused(origin):
    async def go() -> None:
        async with stream_request(f"{origin.url}/big", origin=True) as resp:
            async for _ in resp.chunks():
                break  # the consumer stops after the first chunk
        assert origin_connections.pool().idle_count() == 0
        assert await get(f"{origin.url}/a") == b"/a" * 100
        async with stream_request(f"{origin.url}/big", origin=True) as resp:
            assert len(await resp.read_all(BIG)) == BIG  # read whole: kept
        assert await get(f"{origin.url}/b") == b"/b" * 100
    run(go())
    assert [n for n, _, _, _ in origin.requests] == [1, 2, 2, 2]


def test_connection_close_and_keep_alive_timeout_from_the_origin_are_honoured(origin):
    origin.connection_close = True

    async def go() -> None:
        for i in range(3):
            await get(f"{origin.url}/c{i}")
        assert origin_connections.pool().idle_count() == 0
        origin.connection_close = False
        origin.keep_alive_header = "timeout=1"  # kept for less than a second
        await get(f"{origin.url}/k")
        assert origin_connections.pool().idle_count() == 0
        origin.keep_alive_header = "timeout=5, max=100"
        await get(f"{origin.url}/k2")
        assert origin_connections.pool().idle_count() == 1
    run(go())
    assert origin.connections == 5


def test_idle_connections_are_bounded():
    assert origin_connections.keep_for("timeout=5") == 4.0
    assert origin_connections.keep_for(None) == origin_connections.IDLE_SECONDS
    origins = [CountingOrigin() for _ in range(3)]
    try:
        async def go() -> None:
            pool = origin_connections.pool()
            pool.per_route, pool.max_idle = 2, 3
            for o in origins:  # 4 requests at once per origin: 4 connections each, 2 kept per origin
                await asyncio.gather(*(get(f"{o.url}/{i}") for i in range(4)))
                assert pool.idle_count() <= 3
            assert pool.idle_count() == 3
        run(go())
        assert [o.connections for o in origins] == [4, 4, 4]
    finally:
        for o in origins:
            o.stop()


def test_tls_connections_are_kept_per_verifying_context(tmp_path: Path):
    ca, cert, key = make_ca(tmp_path / "pki")
    other_ca, _, _ = make_ca(tmp_path / "other")
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    o = CountingOrigin(server_tls)
    trusting = ssl.create_default_context(cafile=str(ca))
    untrusting = ssl.create_default_context(cafile=str(other_ca))
    try:
        async def go() -> None:
            for i in range(3):
                assert await get(f"{o.url}/t{i}", ssl_ctx=trusting) == f"/t{i}".encode() * 100
            # a kept connection verified with another context is not a verification for this one
            with pytest.raises(UpstreamError, match="TLS failed"):
                await get(f"{o.url}/u", ssl_ctx=untrusting)
            assert await get(f"{o.url}/t3", ssl_ctx=trusting) == b"/t3" * 100
        run(go())
        # one kept connection for the trusting context; the other refused the certificate itself
        assert [(n, p) for n, _, p, _ in o.requests] == [(1, "/t0"), (1, "/t1"), (1, "/t2"), (1, "/t3")]
    finally:
        o.stop()


def test_connections_are_kept_per_proxy_route(origin, tinyproxy):
    async def go() -> None:
        proxies.configure(proxies.ProxyConfig(http=tinyproxy.url))
        try:
            await get(f"{origin.url}/via1")
            await get(f"{origin.url}/via2")
        finally:
            proxies.configure(proxies.ProxyConfig())
        # the proxy is gone from the config: the kept connection to it must not carry this
        await get(f"{origin.url}/direct")
    run(go())
    relayed = tinyproxy.requests()
    assert relayed[:2] == [f"GET {origin.url}/via1 HTTP/1.1", f"GET {origin.url}/via2 HTTP/1.1"]
    assert len(relayed) == 2, "a request after the proxy was removed still went through it"
    assert [p for _, _, p, _ in origin.requests] == ["/via1", "/via2", "/direct"]


def test_an_idle_connection_is_closed_after_its_time(origin):
    async def go() -> None:
        pool = origin_connections.pool()
        origin.keep_alive_header = "timeout=2"
        await get(f"{origin.url}/a")
        assert pool.idle_count() == 1
        deadline = time.monotonic() + 5
        while pool.idle_count() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert pool.idle_count() == 0
    run(go())


def _scrape(node: Any) -> dict[str, float]:
    """`GET /metrics` over TCP, as Prometheus scrapes it: sample name -> value (unlabelled ones)."""
    status, _, body = node.tcp("GET", "/metrics")
    assert status == 200
    return {parts[0]: float(parts[1]) for line in body.decode().splitlines()
            if line.startswith("beiran_origin_connections") and len(parts := line.split()) == 2}


def test_a_daemon_exports_its_origin_connections_to_metrics(cluster, origin):
    """Two blobs from one `[origins]` entry, one after the other: one TCP connection at the origin,
    and /metrics says so (opened 1, reused 1, the connection idle in the pool afterwards)."""
    node = cluster.add(config={"origins": {"o": origin.url}})
    assert _scrape(node) == {"beiran_origin_connections_opened_total": 0.0,
                             "beiran_origin_connections_reused_total": 0.0, "beiran_origin_connections_idle": 0.0}
    for path in ("/one", "/two"):
        data = path.encode() * 100  # what CountingOrigin answers
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        result = node.fetch(digest, len(data), {"plugin": "origin", "name": "o", "path": path})
        assert "error" not in result, result
        assert node.blob(digest) == data
    assert origin.connections == 1 and [p for _, _, p, _ in origin.requests] == ["/one", "/two"]
    assert _scrape(node) == {"beiran_origin_connections_opened_total": 1.0,
                             "beiran_origin_connections_reused_total": 1.0, "beiran_origin_connections_idle": 1.0}
    stats = node.metrics()  # `beiran stats` reads the same numbers
    assert stats["beiran_origin_connections_opened_total"] == 1 and stats["beiran_origin_connections_reused_total"] == 1
