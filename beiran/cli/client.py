"""A small client for the daemon's unix socket (stdlib http.client: the CLI starts fast)."""

from __future__ import annotations

import http.client
import json
import os
import socket
from collections.abc import Iterator
from typing import Any

from beiran.cli.errors import CLIError, DaemonNotRunning


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


def default_socket() -> str:
    env = os.environ.get("BEIRAN_SOCKET")
    if env:
        return env
    from beiran.config import load_config
    from beiran.errors import BeiranError

    try:
        return str(load_config().socket_path)
    except BeiranError as exc:
        raise CLIError(exc.message) from None


class DaemonClient:
    def __init__(self, socket_path: str | None = None, timeout: float = 60.0) -> None:
        self.socket_path = socket_path or default_socket()
        self.timeout = timeout

    def _open(self, method: str, path: str, body: Any = None, raw: Any = None,
              headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
        conn = _UnixConnection(self.socket_path, self.timeout)
        hdrs = dict(headers or {})
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            hdrs["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=data, headers=hdrs)
            return conn.getresponse()
        except (FileNotFoundError, ConnectionRefusedError):
            raise DaemonNotRunning(f"the beiran daemon is not running (no daemon at {self.socket_path}); "
                           "start it with `beiran daemon`") from None
        except PermissionError:
            raise CLIError(f"permission denied on {self.socket_path}") from None
        except TimeoutError:
            raise CLIError("the beiran daemon did not answer in time") from None
        except OSError as exc:
            raise CLIError(f"cannot talk to the daemon at {self.socket_path}: {exc}") from None

    @staticmethod
    def _raise_for(resp: http.client.HTTPResponse) -> None:
        if resp.status < 400:
            return
        payload = resp.read()
        try:
            err = json.loads(payload)
            message = err.get("message") or err.get("error") or payload.decode()
        except (ValueError, AttributeError):
            message = payload.decode(errors="replace").strip() or resp.reason
        raise CLIError(f"{message} (HTTP {resp.status})")

    def request(self, method: str, path: str, body: Any = None, raw: Any = None,
                headers: dict[str, str] | None = None) -> Any:
        resp = self._open(method, path, body, raw, headers)
        self._raise_for(resp)
        payload = resp.read()
        if "json" in (resp.getheader("Content-Type") or ""):
            return json.loads(payload)
        return payload

    def response(self, method: str, path: str) -> http.client.HTTPResponse:
        """The raw response, status and headers kept (for relays such as `beiran ui --serve`)."""
        return self._open(method, path)

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, body if body is not None else {})

    def stream_lines(self, method: str, path: str, body: Any = None) -> Iterator[dict[str, Any]]:
        """NDJSON progress streams (fetches, pulls)."""
        resp = self._open(method, path, body)
        self._raise_for(resp)
        for line in resp:
            line = line.strip()
            if line:
                yield json.loads(line)

    def download(self, path: str, out: Any, chunk: int = 1 << 20) -> int:
        resp = self._open("GET", path)
        self._raise_for(resp)
        n = 0
        while data := resp.read(chunk):
            out.write(data)
            n += len(data)
        length = resp.getheader("Content-Length")
        if length is not None and length.isdigit() and n != int(length):
            raise CLIError(f"the daemon stopped after {n} of {length} bytes (see the daemon log)")
        return n
