"""An attacker on the LAN that joins as a whole peer and calls RPCs: it dials a daemon's `/peer`
websocket (with a valid cluster-token proof when given the token), says hello, syncs an empty
holding list, answers heartbeats, and sends whatever RPCs a test wants. (fakepeer.py drives the
protocol message by message, for attacks on the protocol itself.)"""

from __future__ import annotations

import asyncio
import json
import uuid as uuidlib
from typing import Any

from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect


class FakePeer:
    def __init__(self, daemon_url: str, token: str | None = None, node_uuid: str | None = None,
                 url: str | None = None, plugins: list[str] | None = None, port: int = 8888,
                 holdings: list[list] | None = None) -> None:
        self.daemon_url = daemon_url.rstrip("/")
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

    def headers(self, method: str, path: str) -> dict[str, str]:
        if not self.token:
            return {}
        from beiran.peer.auth import PeerAuth

        return PeerAuth(self.token, self.uuid).headers(method, path)

    async def connect(self, timeout: float = 10) -> FakePeer:
        ws_url = self.daemon_url.replace("http://", "ws://", 1) + "/peer"
        self.ws = await websocket_connect(HTTPRequest(ws_url, headers=self.headers("GET", "/peer"),
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
