"""A small origin HTTP server that counts requests and bytes and can be slow or fail on command."""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class Origin:
    def __init__(self, root: Path, host: str = "127.0.0.1") -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.requests: Counter[str] = Counter()
        self.bytes: Counter[str] = Counter()
        self.ranges: list[tuple[str, str]] = []
        self.rate: float | None = None  # bytes per second
        self.fail_status: int | None = None
        self._lock = threading.Lock()
        origin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                with origin._lock:
                    origin.requests[path] += 1
                if origin.fail_status:
                    self.send_response(origin.fail_status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                f = origin.root / path.lstrip("/")
                if ".." in path or not f.is_file():
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                size = f.stat().st_size
                start, end = 0, size
                rng = self.headers.get("Range")
                if rng:
                    m = re.match(r"bytes=(\d+)-(\d*)", rng)
                    start = int(m.group(1))
                    end = int(m.group(2)) + 1 if m.group(2) else size
                    origin.ranges.append((path, rng))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(end - start))
                self.end_headers()
                with open(f, "rb") as fh:
                    fh.seek(start)
                    left = end - start
                    while left > 0:
                        chunk = fh.read(min(256 << 10, left))
                        try:
                            self.wfile.write(chunk)
                        except OSError:
                            return
                        left -= len(chunk)
                        with origin._lock:
                            origin.bytes[path] += len(chunk)
                        if origin.rate:
                            time.sleep(len(chunk) / origin.rate)

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://{host}:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> Origin:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def put(self, name: str, data: bytes) -> str:
        (self.root / name).write_bytes(data)
        return "/" + name

    def total_bytes(self) -> int:
        return sum(self.bytes.values())
