"""An attacker's peer: speaks Beiran's real peer protocol (the /peer WebSocket, signed requests)
with whatever it wants to claim: message by message (FakePeer) or as a whole peer that calls RPCs
(RPCPeer); and small listeners that count who connects to them.

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


def auth_headers(token: str | None, node: str, method: str, target: str,
                 body: bytes | None = None) -> dict[str, str]:
    """The X-Beiran-Auth header of a request from `node` (none without a token)."""
    return {"X-Beiran-Auth": sign(token, method, target, node, body)} if token else {}


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


class RPCPeer:
    """An attacker on the LAN that joins as a whole peer and calls RPCs: it dials a daemon's `/peer`
    websocket (with a valid cluster-token proof when given the token), says hello, syncs its holding
    list, answers heartbeats, refuses the daemon's RPCs, and sends whatever RPCs a test wants.
    (FakePeer drives the protocol message by message, for attacks on the protocol itself.)"""

    def __init__(self, daemon_url: str, token: str | None = None, node_uuid: str | None = None,
                 url: str | None = None, plugins: list[str] | None = None, port: int = 8888,
                 holdings: list[list] | None = None, source_ip: str | None = None) -> None:
        self.daemon_url = daemon_url.rstrip("/")
        self.source_ip = source_ip  # the address it connects from (the node fetches from there)
        self.token = token
        self.uuid = node_uuid or str(uuidlib.uuid4())
        self.url = url
        self.plugins = plugins or []
        self.port = port  # the port it claims: the node fetches from its socket address at this port
        self.holdings = holdings or []  # [[digest, "c" | "p", size], ...] it announces
        self.hello: dict[str, Any] = {}
        self.ws: Any = None
        self._ids = 0
        self._calls: dict[int, asyncio.Future] = {}
        self._reader: asyncio.Task | None = None
        self.synced = asyncio.Event()
        self.closed: str | None = None
        #: RPCs the daemon called on this peer (each refused with 503)
        self.received: list[dict[str, Any]] = []

    def headers(self, method: str, path: str, body: bytes | None = None) -> dict[str, str]:
        return auth_headers(self.token, self.uuid, method, path, body)

    async def connect(self, timeout: float = 10) -> RPCPeer:
        ws_url = self.daemon_url.replace("http://", "ws://", 1) + "/peer"
        self.ws = await websocket_connect(HTTPRequest(ws_url, headers=self.headers("GET", "/peer"),
                                                      network_interface=self.source_ip,
                                                      connect_timeout=timeout, request_timeout=timeout))
        self.hello = json.loads(await asyncio.wait_for(self.ws.read_message(), timeout))
        self.send({"t": "hello", "uuid": self.uuid, "url": self.url, "hostname": "attacker",
                   "version": "0", "os_type": "linux", "architecture": "x86_64", "addresses": [],
                   "port": self.port, "plugins": self.plugins, "epoch": "e" + self.uuid[:8], "seq": 0, "proof": None})
        self.send({"t": "sync_req", "epoch": None, "seq": 0})
        self._reader = asyncio.ensure_future(self._read())
        await asyncio.wait_for(self.synced.wait(), timeout)
        return self

    def send(self, msg: dict[str, Any]) -> None:
        self.ws.write_message(json.dumps(msg))

    async def _read(self) -> None:
        while True:
            raw = await self.ws.read_message()
            if raw is None:
                self.closed = str(self.ws.close_reason)
                for fut in self._calls.values():
                    if not fut.done():
                        fut.set_exception(ConnectionError(f"daemon closed the connection: {self.closed}"))
                return
            msg = json.loads(raw)
            kind = msg.get("t")
            if kind == "ping":
                self.send({"t": "pong"})
            elif kind == "sync_req":
                self.send({"t": "snap", "epoch": "e" + self.uuid[:8], "seq": 0, "entries": self.holdings,
                           "first": True, "last": True})
            elif kind in ("snap", "delta") and (msg.get("last") or msg.get("sync")):
                self.synced.set()
            elif kind == "rpc":
                self.received.append(msg)
                self.send({"t": "rpc_error", "id": msg["id"],
                           "e": {"error": "unavailable", "message": "refused", "status": 503}})
            elif kind in ("rpc_result", "rpc_error"):
                fut = self._calls.pop(int(msg["id"]), None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)

    async def rpc(self, method: str, timeout: float = 40, **params: Any) -> dict[str, Any]:
        """Call `rpc_<method>` on the daemon; the raw answer ({"t": "rpc_result"|"rpc_error", ...})."""
        self._ids += 1
        fut = asyncio.get_running_loop().create_future()
        self._calls[self._ids] = fut
        self.send({"t": "rpc", "id": self._ids, "m": method, "p": params})
        return await asyncio.wait_for(fut, timeout)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self.ws is not None:
            self.ws.close()


class ThreadedListener:
    """A TCP listener on `ip` (any free port) whose thread accepts connections, counts them and
    hands each to `accepted`, until `stop`."""

    def __init__(self, ip: str) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((ip, 0))
        self.sock.listen(64)
        self.ip, self.port = ip, self.sock.getsockname()[1]
        self.connections = 0
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def start_listening(self) -> None:
        """Called by a subclass once its own state is set (connections may come at once)."""
        self._thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            self.accepted(conn)

    def accepted(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()


class CountingListener(ThreadedListener):
    """A TCP listener that counts connections and answers any request with 200 and a body."""

    def __init__(self, ip: str, body: bytes = b"internal secret\n") -> None:
        super().__init__(ip)
        self.url = f"http://{ip}:{self.port}"
        self.body = body
        self.requests: list[bytes] = []
        self.start_listening()

    def accepted(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(2)
            self.requests.append(conn.recv(4096))
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                         % len(self.body) + self.body)
        except OSError:
            pass
        finally:
            conn.close()
