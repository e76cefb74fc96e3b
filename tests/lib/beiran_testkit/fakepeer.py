"""An attacker's peer: speaks Beiran's real peer protocol (the /peer WebSocket, signed requests)
with whatever it wants to claim, and small listeners that count who connects to them.

The signing here is written from the protocol's definition (README, "Cluster token"), not
imported from the daemon, so a change of the wire format shows up as a test failure.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import socket
import threading
import time
import uuid as uuidlib
from typing import Any

from tornado.httpclient import HTTPRequest
from tornado.iostream import StreamClosedError
from tornado.websocket import WebSocketClientConnection, WebSocketClosedError, websocket_connect


def sign(token: str, method: str, target: str, node: str, body: bytes | None = None,
         ts: int | None = None, nonce: str | None = None) -> str:
    """An X-Beiran-Auth value: HMAC-SHA256 over v2, method, path?query, body sha256, ts, nonce, uuid."""
    ts = int(time.time()) if ts is None else ts
    nonce = nonce or secrets.token_hex(16)
    bh = hashlib.sha256(body).hexdigest() if body else ""
    msg = "\n".join(["v2", method.upper(), target, bh, str(ts), nonce, node]).encode()
    sig = hmac.new(token.encode(), msg, hashlib.sha256).hexdigest()
    return f"uuid={node},ts={ts},nonce={nonce}" + (f",body={bh}" if bh else "") + f",sig={sig}"


def digest_of(i: int, salt: str = "") -> str:
    return "sha256:" + hashlib.sha256(f"{salt}{i}".encode()).hexdigest()


class FakePeer:
    """One connection to a daemon's /peer, driven by the test."""

    def __init__(self, target_url: str, token: str | None = None, node: str | None = None,
                 source_ip: str | None = None) -> None:
        self.target_url = target_url
        self.token = token
        self.uuid = node or str(uuidlib.uuid4())
        self.source_ip = source_ip
        self.ws: WebSocketClientConnection | None = None
        self.their_hello: dict[str, Any] = {}
        self.auth_header: str | None = None

    async def connect(self, header: str | None = None, signed_uuid: str | None = None) -> dict[str, Any]:
        """Open the WebSocket (signed unless `header` is given) and read the node's hello."""
        headers = {}
        if header is not None:
            headers["X-Beiran-Auth"] = header
        elif self.token:
            headers["X-Beiran-Auth"] = sign(self.token, "GET", "/peer", signed_uuid or self.uuid)
        self.auth_header = headers.get("X-Beiran-Auth")
        ws_url = self.target_url.replace("http://", "ws://", 1) + "/peer"
        req = HTTPRequest(ws_url, headers=headers, network_interface=self.source_ip,
                          connect_timeout=5, request_timeout=5)
        self.ws = await websocket_connect(req, max_message_size=64 << 20)
        self.their_hello = await self.recv(5)
        return self.their_hello

    async def send(self, msg: dict[str, Any] | str) -> None:
        assert self.ws is not None
        await self.ws.write_message(msg if isinstance(msg, str) else json.dumps(msg))

    async def recv(self, timeout: float = 5) -> dict[str, Any] | None:
        """The next message other than ping/pong (answering pings); None once closed."""
        assert self.ws is not None
        deadline = time.monotonic() + timeout
        while True:
            raw = await asyncio.wait_for(self.ws.read_message(), max(0.0, deadline - time.monotonic()))
            if raw is None:
                return None
            msg = json.loads(raw)
            if msg.get("t") == "ping":
                try:
                    await self.send({"t": "pong"})
                except (WebSocketClosedError, StreamClosedError):
                    return None  # closed under us
                continue
            if msg.get("t") in ("pong", "delta", "snap"):
                continue
            return msg

    async def hello(self, **claims: Any) -> None:
        msg = {"t": "hello", "uuid": self.uuid, "hostname": "evil", "version": "0", "epoch": "e1",
               "seq": 0, "port": 8888, "addresses": [], "plugins": [], "proof": None}
        msg.update(claims)
        await self.send(msg)

    async def join(self, entries: list[list] | None = None, batch: int = 5000, **claims: Any) -> None:
        """hello, then answer the node's sync_req with a snapshot of `entries`."""
        await self.hello(**claims)
        req = await self.recv()
        assert req is not None and req.get("t") == "sync_req", req
        await self.snapshot(entries or [], batch)

    async def snapshot(self, entries: list[list], batch: int = 5000) -> None:
        """Send `entries` in batches; stop when the node hangs up (what a flood should make it do:
        callers check `closed()`)."""
        chunks = [entries[i:i + batch] for i in range(0, len(entries), batch)] or [[]]
        for i, chunk in enumerate(chunks):
            try:
                await self.send({"t": "snap", "epoch": "e1", "seq": len(entries), "entries": chunk,
                                 "first": i == 0, "last": i == len(chunks) - 1})
            except (WebSocketClosedError, StreamClosedError):
                return

    async def closed(self, timeout: float = 5) -> bool:
        """True when the node closes the connection within `timeout`."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                if await self.recv(left) is None:
                    return True
        except TimeoutError:
            return False

    @property
    def close_code(self) -> int | None:
        return self.ws.close_code if self.ws else None

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()


class CountingListener:
    """A TCP listener that counts connections and answers any request with 200 and a body."""

    def __init__(self, ip: str, body: bytes = b"internal secret\n") -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((ip, 0))
        self.sock.listen(64)
        self.ip, self.port = ip, self.sock.getsockname()[1]
        self.url = f"http://{ip}:{self.port}"
        self.body = body
        self.connections = 0
        self.requests: list[bytes] = []
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            try:
                conn.settimeout(2)
                self.requests.append(conn.recv(4096))
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                             % len(self.body) + self.body)
            except OSError:
                pass
            finally:
                conn.close()

    def stop(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()
