"""The WebSocket carrying the peer protocol: `/peer` on the TCP listener, and the dialer."""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
import ssl
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import tornado.websocket
from tornado.httpclient import HTTPRequest

from beiran.access import Access
from beiran.handlers import BaseHandler
from beiran.peer.auth import HEADER, parse_auth_header, requesting_peer
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
                                   nonce=self.ctx.auth.nonce_of(self.request),
                                   remote_ip=self.request.remote_ip or "",
                                   proved_uuid=requesting_peer(self.request))
        self.conn.start()

    async def on_message(self, message: str | bytes) -> None:
        if self.conn:
            self.conn.on_message(message)
        await asyncio.sleep(0)  # a peer's backlog of frames yields to everyone else between frames

    def on_close(self) -> None:
        if self.conn:
            self.conn.on_transport_closed(self.close_code)


async def dial(mgr: PeerManager, url: str) -> PeerConnection:
    """Open an outbound peer connection and start reading from it.

    It leaves from the listen address when that is a specific one, so the peer sees (and fetches
    from) the address this node serves on.
    """
    ws_url = url.replace("http://", "ws://", 1).replace("https://", "wss://", 1) + "/peer"
    headers = mgr.ctx.auth.headers("GET", "/peer")
    nonce = parse_auth_header(headers[HEADER]).nonce if headers else secrets.token_hex(8)
    req = HTTPRequest(ws_url, headers=headers, connect_timeout=5, request_timeout=10,
                      network_interface=_source_ip(mgr.ctx.config.listen_host, url))
    ws = await tornado.websocket.websocket_connect(req, max_message_size=MAX_MESSAGE,
                                                   compression_options={})
    conn = PeerConnection(mgr, ws.write_message, ws.close, outbound=True, url=url, nonce=nonce)

    async def reader() -> None:
        while True:
            msg = await ws.read_message()
            if msg is None:
                conn.on_transport_closed(ws.close_code)
                return
            conn.on_message(msg)
            await asyncio.sleep(0)

    conn.start()
    conn._tasks.append(asyncio.ensure_future(reader()))
    return conn


def _source_ip(listen_host: str, url: str) -> str | None:
    """The listen address, when it is one specific address that can reach `url`'s host."""
    try:
        src = ipaddress.ip_address(listen_host)
        dst = ipaddress.ip_address(urlsplit(url).hostname or "")
    except ValueError:
        return None
    if src.is_unspecified or src.version != dst.version or src.is_loopback != dst.is_loopback:
        return None
    return str(src)


def dial_error(exc: Exception) -> str:
    """Why a dial failed, in words an operator acts on."""
    code = getattr(exc, "code", None)
    if code == 401:
        return "refused our cluster token (HTTP 401): set the same cluster_token on every node"
    if code == 403:
        return "refused this node (HTTP 403): is this node's address in its peer_cidrs?"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (f"has a TLS certificate this node does not trust ({exc.verify_message}): sign it with a CA "
                "in the system's store, or give this node that CA's file in SSL_CERT_FILE")
    return f"could not be connected: {exc or type(exc).__name__}"
