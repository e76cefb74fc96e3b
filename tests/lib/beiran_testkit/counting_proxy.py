"""A reverse proxy for tests that counts requests and misbehaves on command (500, 404, hang,
malformed body, corrupted body, port closed): put it between the daemons and a real origin."""

from __future__ import annotations

import http.client
import socket
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from beiran_testkit.procs import serve_in_thread, stop_server


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class CountingProxy:
    """A reverse proxy in front of the registry that counts requests and can misbehave on command.

    `fault(prefix, mode)`: requests whose path starts with `prefix` get mode "500", "404", "hang"
    (no answer until the test ends), "malformed" (200 with a body that is not a packument) or
    "corrupt" (the upstream body with its first byte flipped). `stop()` closes the port (connection
    refused); `start()` opens it again on the same port.
    """

    def __init__(self, target: str, host: str = "127.0.0.1") -> None:
        self.target = target.rstrip("/")
        self.host = host
        self.port = free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.requests: Counter[tuple[str, str]] = Counter()
        self.statuses: Counter[int] = Counter()
        self.conditional = 0
        self.faults: dict[str, str] = {}
        self._lock = threading.Lock()
        self._release = threading.Event()
        self.server: ThreadingHTTPServer | None = None

    # counting
    def tarball_requests(self) -> Counter[str]:
        return Counter({p: n for (m, p), n in self.requests.items() if m == "GET" and p.endswith(".tgz")})

    def packument_requests(self) -> Counter[str]:
        return Counter({p: n for (m, p), n in self.requests.items()
                        if m == "GET" and not p.endswith(".tgz") and not p.startswith("/-/")})

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.statuses.clear()
            self.conditional = 0

    def fault(self, prefix: str, mode: str | None) -> None:
        if mode is None:
            self.faults.pop(prefix, None)
        else:
            self.faults[prefix] = mode

    def start(self) -> CountingProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _relay(self) -> None:
                path = self.path.split("?")[0]
                with proxy._lock:
                    proxy.requests[(self.command, path)] += 1
                    if self.headers.get("If-None-Match") or self.headers.get("If-Modified-Since"):
                        proxy.conditional += 1
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                mode = next((m for p, m in proxy.faults.items() if path.startswith(p)), None)
                if mode == "hang":
                    proxy._release.wait(120)
                    self.close_connection = True
                    return
                if mode in ("500", "404", "503"):
                    self._answer(int(mode), b'{"error": "injected"}', {"Content-Type": "application/json"})
                    return
                if mode == "malformed":
                    self._answer(200, b'{"name": 42, "versions": "nope"', {"Content-Type": "application/json"})
                    return
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("connection", "keep-alive", "proxy-connection")}
                conn = http.client.HTTPConnection(proxy.target.split("://", 1)[1], timeout=60)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    out = {k: v for k, v in resp.getheaders()
                           if k.lower() not in ("connection", "keep-alive", "transfer-encoding", "content-length")}
                finally:
                    conn.close()
                if mode == "corrupt" and data:
                    data = bytes([data[0] ^ 0xFF]) + data[1:]
                self._answer(resp.status, data, out)

            def _answer(self, status: int, data: bytes, headers: dict[str, str]) -> None:
                with proxy._lock:
                    proxy.statuses[status] += 1
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                if status != 304:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if status != 304 and self.command != "HEAD":
                    try:
                        self.wfile.write(data)
                    except OSError:
                        pass

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

        self.server = serve_in_thread(Handler, self.host, self.port)
        return self

    def stop(self) -> None:
        stop_server(self.server)
        self.server = None

    def close(self) -> None:
        self._release.set()
        self.stop()
