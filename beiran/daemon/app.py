"""Build the Tornado application: core routes, peer routes, then every loaded plugin's routes."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import tornado.web

from beiran import preheat_api, routing
from beiran.context import DaemonContext
from beiran.daemon import core_api
from beiran.handlers import NotFoundHandler
from beiran.listener import GuardedHTTPServer
from beiran.peer.connection import MAX_MESSAGE
from beiran.peer.fetch_http import PeerFetchHandler
from beiran.peer.rpc_http import PeerRPCHandler
from beiran.peer.serving import BlobHandler
from beiran.peer.websocket import PeerSocketHandler
from beiran.store import api as store_api
from beiran.tasks import spawn
from beiran.ui import handlers as ui_handlers

_http_log = logging.getLogger("beiran.http")


def make_app(ctx: DaemonContext) -> tornado.web.Application:
    return routing.Application(
        all_routes(ctx), ctx=ctx, default_handler_class=NotFoundHandler, compress_response=False,
        websocket_max_message_size=MAX_MESSAGE, log_function=_log_request)


def all_routes(ctx: DaemonContext) -> list[Any]:
    """Every route in the order it is tried: core, peers, then each loaded plugin's."""
    routes: list[Any] = []
    routes += core_api.ROUTES
    routes += store_api.ROUTES
    routes += preheat_api.ROUTES
    routes += ui_handlers.ROUTES
    routes += [(r"/blobs/(.+)", BlobHandler), (r"/peer", PeerSocketHandler),
               (r"/peer/fetch", PeerFetchHandler), (r"/peer/rpc/([a-z_]{1,32})", PeerRPCHandler)]
    routes += ctx.plugins.all_routes()
    return routes


def _log_request(handler: tornado.web.RequestHandler) -> None:
    """Every answered request: its metrics, and a log line (DEBUG; WARNING for a 5xx)."""
    status = handler.get_status()
    request = handler.request
    seconds = request.request_time()
    plugin = getattr(getattr(handler, "plugin", None), "name", None) or "core"
    handler.settings["ctx"].metrics.observe_request(plugin, status, seconds)
    level = logging.WARNING if status >= 500 else logging.DEBUG
    if _http_log.isEnabledFor(level):
        _http_log.log(level, "%d %s %s (%s) %.1fms", status, request.method, request.uri, request.remote_ip,
                      1000.0 * seconds)


class PlainHTTPServer(GuardedHTTPServer):
    """The TCP listener: a connection that opens with a TLS handshake is closed at once.

    Clients told a mirror is "insecure" (skopeo, podman, docker) try https first and fall back to
    http only when that fails; without this they wait for their TLS handshake timeout (10 s per pull).
    """

    def handle_stream(self, stream: Any, address: Any) -> None:
        # most clients send their request with the connection: then it is routed now, with no
        # event-loop pass (a task, a reader) before the answer starts
        try:
            first = stream.socket.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            spawn(self._sniff(stream, address), "TLS sniffing a new connection")
            return
        except OSError:
            stream.close()
            return
        self._route(stream, address, first)

    async def _sniff(self, stream: Any, address: Any) -> None:
        """Waits (at most 2 s) for the first byte of a connection that sent nothing yet."""
        loop = asyncio.get_running_loop()
        sock = stream.socket
        fd = sock.fileno()
        ready = loop.create_future()
        loop.add_reader(fd, lambda: None if ready.done() else ready.set_result(None))
        try:
            await asyncio.wait_for(ready, 2.0)
        except TimeoutError:
            pass
        finally:
            loop.remove_reader(fd)
        try:
            first = sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            first = b""
        except OSError:
            stream.close()
            return
        self._route(stream, address, first)

    def _route(self, stream: Any, address: Any, first: bytes) -> None:
        if first == b"\x16":  # TLS handshake record
            stream.close()
            return
        super().handle_stream(stream, address)
