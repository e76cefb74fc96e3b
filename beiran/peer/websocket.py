"""The WebSocket carrying the peer protocol: `/peer` on the TCP listener, and the dialer."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

import tornado.websocket
from tornado.httpclient import HTTPRequest

from beiran.access import Access
from beiran.handlers import BaseHandler
from beiran.peer.connection import MAX_MESSAGE, PeerConnection

if TYPE_CHECKING:
    from beiran.peer.manager import PeerManager


class PeerSocketHandler(tornado.websocket.WebSocketHandler, BaseHandler):
    access = Access.PEER

    def initialize(self, plugin: Any = None, **kwargs: Any) -> None:
        BaseHandler.initialize(self, plugin, **kwargs)
        self.conn: PeerConnection | None = None

    async def get(self, *args: Any, **kwargs: Any) -> None:
        BaseHandler.prepare(self)  # auth before the upgrade: a wrong token never syncs
        await super().get(*args, **kwargs)

    def prepare(self) -> None:  # the checks run in get() so the upgrade can be refused cleanly
        pass

    def get_compression_options(self) -> dict[str, Any]:
        return {}

    def open(self, *args: str, **kwargs: str) -> None:
        mgr: PeerManager = self.ctx.peers
        self.conn = PeerConnection(mgr, self.write_message, self.close, outbound=False,
                                   nonce=self.ctx.auth.nonce_of(self.request))
        self.conn.start()

    def on_message(self, message: str | bytes) -> None:
        if self.conn:
            self.conn.on_message(message)

    def on_close(self) -> None:
        if self.conn:
            self.conn.on_transport_closed()


async def dial(mgr: PeerManager, url: str) -> PeerConnection:
    """Open an outbound peer connection and start reading from it."""
    import asyncio

    ws_url = url.replace("http://", "ws://", 1).replace("https://", "wss://", 1) + "/peer"
    headers = mgr.ctx.auth.headers("GET", "/peer")
    nonce = headers.get("X-Beiran-Auth", "").split("nonce=")[-1].split(",")[0] if headers else ""
    if not headers:
        nonce = secrets.token_hex(8)
    req = HTTPRequest(ws_url, headers=headers, connect_timeout=5, request_timeout=10)
    ws = await tornado.websocket.websocket_connect(req, max_message_size=MAX_MESSAGE,
                                                   compression_options={})
    conn = PeerConnection(mgr, ws.write_message, ws.close, outbound=True, url=url, nonce=nonce)

    async def reader() -> None:
        while True:
            msg = await ws.read_message()
            if msg is None:
                conn.on_transport_closed()
                return
            conn.on_message(msg)

    conn.start()
    conn._tasks.append(asyncio.ensure_future(reader()))
    return conn
