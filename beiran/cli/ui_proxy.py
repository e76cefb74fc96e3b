"""The console on a local port, relayed to the daemon's unix socket.

Only GETs of the console's own paths and the panels the daemon declares are relayed: the socket is
the admin channel, and this relay must not turn into a TCP door to it."""

from __future__ import annotations

import re
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import click

from beiran.cli.client import DaemonClient

_PAGES = re.compile(r"^/ui(/|/index\.html|/console\.js|/console\.css|/state)?$")


def serve(daemon: DaemonClient, port: int) -> None:
    panels = {p["url"] for p in daemon.get("/ui/state").get("panels", [])}

    class Relay(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if not (_PAGES.match(path) or path in panels):
                self.send_error(404, "not a console path")
                return
            resp = daemon.response("GET", path)
            body = resp.read()
            self.send_response(resp.status)
            for name, value in resp.getheaders():
                if name.lower() not in ("content-length", "connection", "transfer-encoding", "server"):
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Relay)
    click.echo(f"http://127.0.0.1:{server.server_address[1]}/ui/  (Ctrl-C to stop)", err=False)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
