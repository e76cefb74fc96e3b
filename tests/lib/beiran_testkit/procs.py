"""Stopping the server processes the test kit starts."""

from __future__ import annotations

import socket
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def stop_process(proc: subprocess.Popen | None, grace: float = 10.0) -> None:
    """SIGTERM, wait `grace` seconds, then SIGKILL; a process already gone is fine."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class _Server(ThreadingHTTPServer):
    """Knows its open connections, so stopping it cuts them as a server going down does (clients
    keep connections alive: closing only the listening socket would leave them served)."""

    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.open_connections: set[socket.socket] = set()
        self._conn_lock = threading.Lock()

    def process_request(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        with self._conn_lock:
            self.open_connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:  # type: ignore[no-untyped-def]
        with self._conn_lock:
            self.open_connections.discard(request)
        super().shutdown_request(request)

    def cut_connections(self) -> None:
        with self._conn_lock:
            conns = list(self.open_connections)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def serve_in_thread(handler: type[BaseHTTPRequestHandler], host: str, port: int) -> ThreadingHTTPServer:
    """A threaded stdlib HTTP server for `handler`, serving in a daemon thread."""
    ThreadingHTTPServer.allow_reuse_address = True
    server = _Server((host, port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def stop_server(server: ThreadingHTTPServer | None) -> None:
    if server is not None:
        server.shutdown()
        server.server_close()
        if isinstance(server, _Server):
            server.cut_connections()
