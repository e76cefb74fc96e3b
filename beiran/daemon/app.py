"""Build the Tornado application: core routes, peer routes, then every loaded plugin's routes."""

from __future__ import annotations

import tornado.web

from beiran.context import DaemonContext
from beiran.daemon import core_api
from beiran.handlers import NotFoundHandler
from beiran.peer.serving import BlobHandler
from beiran.peer.websocket import PeerSocketHandler
from beiran.store import api as store_api


def make_app(ctx: DaemonContext) -> tornado.web.Application:
    routes: list = []
    routes += core_api.ROUTES
    routes += store_api.ROUTES
    routes += [(r"/blobs/(.+)", BlobHandler), (r"/peer", PeerSocketHandler)]
    routes += ctx.plugins.all_routes()
    return tornado.web.Application(
        routes, ctx=ctx, default_handler_class=NotFoundHandler, compress_response=False,
        websocket_max_message_size=16 << 20, log_function=_log_request)


def _log_request(handler: tornado.web.RequestHandler) -> None:
    import logging

    status = handler.get_status()
    if status >= 500:
        level = logging.WARNING
    else:
        level = logging.DEBUG
    logging.getLogger("beiran.http").log(level, "%d %s %s (%s) %.1fms", status, handler.request.method,
                                         handler.request.uri, handler.request.remote_ip,
                                         1000.0 * handler.request.request_time())
