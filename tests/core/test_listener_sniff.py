"""The TCP listener's TLS sniff (issue 16, speed): a request that arrived with its connection is
handed to HTTP at once, with no event-loop pass (a task, a reader) before it; a connection that sent
nothing yet is waited for; one that opens with a TLS ClientHello is still closed at once, so clients
that try https first fall back to http without waiting for their handshake timeout."""

from __future__ import annotations

import asyncio
import socket

from tornado.iostream import IOStream
from tornado.testing import AsyncTestCase, gen_test
from tornado.web import Application, RequestHandler

from beiran.daemon.app import PlainHTTPServer

REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
CLIENT_HELLO = b"\x16\x03\x01\x00\x2a\x01\x00\x00\x26\x03\x03" + bytes(32)


class Hello(RequestHandler):
    def get(self) -> None:
        self.write("hello")


class SniffTest(AsyncTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.server = PlainHTTPServer(Application([(r"/", Hello)]))
        self.listener = socket.create_server(("127.0.0.1", 0))

    def tearDown(self) -> None:
        self.listener.close()
        super().tearDown()

    def connect(self, first: bytes) -> tuple[socket.socket, IOStream]:
        """A client connection whose `first` bytes were sent before the listener accepted it."""
        client = socket.create_connection(self.listener.getsockname())
        client.sendall(first)
        conn, _ = self.listener.accept()
        return client, IOStream(conn)

    async def read_all(self, client: socket.socket) -> bytes:
        client.setblocking(False)
        loop = asyncio.get_running_loop()
        data = b""
        while chunk := await asyncio.wait_for(loop.sock_recv(client, 65536), 10):
            data += chunk
        client.close()
        return data

    async def closed_by_server(self, client: socket.socket) -> bool:
        """The server closed the connection (unread bytes make its close a reset)."""
        try:
            return await self.read_all(client) == b""
        except ConnectionResetError:
            return True

    @gen_test(timeout=20)
    async def test_request_with_the_connection_is_served_without_a_loop_pass(self):
        client, stream = self.connect(REQUEST)
        self.server.handle_stream(stream, ("127.0.0.1", 1))
        # before any await: HTTP already has the connection
        assert len(self.server._connections) == 1
        answer = await self.read_all(client)
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"hello")

    @gen_test(timeout=20)
    async def test_connection_that_sent_nothing_yet_is_waited_for(self):
        client, stream = self.connect(b"")
        self.server.handle_stream(stream, ("127.0.0.1", 1))
        assert not self.server._connections and not stream.closed()
        client.sendall(REQUEST)
        answer = await self.read_all(client)
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"hello")

    @gen_test(timeout=20)
    async def test_tls_client_hello_is_closed_at_once(self):
        client, stream = self.connect(CLIENT_HELLO)
        self.server.handle_stream(stream, ("127.0.0.1", 1))
        assert stream.closed() and not self.server._connections
        assert await self.closed_by_server(client)

    @gen_test(timeout=20)
    async def test_tls_client_hello_after_the_accept_is_closed(self):
        client, stream = self.connect(b"")
        self.server.handle_stream(stream, ("127.0.0.1", 1))
        client.sendall(CLIENT_HELLO)
        assert await self.closed_by_server(client)
        assert stream.closed() and not self.server._connections
