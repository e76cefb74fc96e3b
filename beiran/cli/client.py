"""A small client for the daemon's unix socket (stdlib http.client: the CLI starts fast)."""

from __future__ import annotations

import http.client
import json
import os
import socket
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from beiran.cli.errors import CLIError, DaemonError, DaemonNotRunning


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


HINT = ("start it with `beiran daemon` (scripts/daemon in a checkout), or name its socket with "
        "--socket PATH or BEIRAN_SOCKET=PATH")
QUICK_START_SOCKET = Path(".beiran-data") / "beirand.sock"


def _quick_start_socket(place: Path) -> Path | None:
    path = place / QUICK_START_SOCKET
    try:
        st = path.stat()
    except OSError:
        return None
    return path if stat.S_ISSOCK(st.st_mode) and st.st_uid in (os.getuid(), 0) else None


def quick_start_sockets() -> tuple[list[Path], list[Path]]:
    """Sockets of a daemon started by scripts/daemon (`--data-dir <checkout>/.beiran-data`): next
    to the venv this CLI runs from (`<checkout>/.venv`), and in the working directory or above it.
    Only sockets of this user (or root) count: a socket someone else left in a shared directory
    must not receive our admin requests."""
    by_venv = []
    if sys.prefix != sys.base_prefix and (found := _quick_start_socket(Path(sys.prefix).parent)):
        by_venv.append(found)
    cwd = Path.cwd()
    by_cwd = [p for place in (cwd, *cwd.parents) if (p := _quick_start_socket(place)) and p not in by_venv]
    return by_venv, by_cwd


def default_sockets() -> list[tuple[str, str]]:
    """(path, where it came from) for each socket to try when none was named: a config file's
    socket first; else the daemon scripts/daemon started for the venv this CLI runs from, the
    default socket, then a quick-start daemon's in the working directory or above."""
    from beiran.config import load_config
    from beiran.errors import BeiranError

    try:
        # The CLI needs only the socket path: stray BEIRAN_* variables are the daemon's to refuse.
        cfg = load_config(strict_env=False)
    except BeiranError as exc:
        raise CLIError(exc.message) from None
    where = f"socket of {cfg.source_file}" if cfg.source_file else "default socket"
    if os.environ.get("BEIRAN_DATA_DIR") or os.environ.get("BEIRAN_RUN_DIR"):
        where = "socket of BEIRAN_DATA_DIR / BEIRAN_RUN_DIR"
    configured = (str(cfg.socket_path), where)
    by_venv, by_cwd = quick_start_sockets()
    venv = [(str(p), "quick-start daemon of this venv") for p in by_venv]
    cwd = [(str(p), "quick-start daemon") for p in by_cwd]
    tried = [configured, *venv] if cfg.source_file or where != "default socket" else [*venv, configured]
    tried += cwd
    unique: dict[str, tuple[str, str]] = {}
    for path, why in tried:
        unique.setdefault(path, (path, why))  # the first reason given for a path wins
    return list(unique.values())


def _why_not(path: str, exc: OSError | None) -> str:
    """What is at `path` instead of a daemon, in a few words."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "no such file"
    except OSError as err:
        return err.strerror or str(err)
    if stat.S_ISDIR(st.st_mode):
        return "a directory, not a socket"
    if not stat.S_ISSOCK(st.st_mode):
        return "a regular file, not a socket" if stat.S_ISREG(st.st_mode) else "not a socket"
    if isinstance(exc, ConnectionRefusedError):
        return "nothing listens there (left by a daemon that stopped?)"
    return (exc.strerror or str(exc)) if exc else "unusable"


class DaemonClient:
    def __init__(self, socket_path: str | None = None, timeout: float = 60.0, origin: str = "--socket") -> None:
        """`socket_path` given (--socket or BEIRAN_SOCKET, named by `origin`): only that one is
        tried. Else the config's socket, then a quick-start daemon's."""
        self.candidates = [(socket_path, origin)] if socket_path else None
        self._named = bool(socket_path)
        self.socket_path = socket_path
        self.timeout = timeout

    def _connect(self, method: str, path: str, data: Any, hdrs: dict[str, str]) -> http.client.HTTPResponse:
        candidates = self.candidates
        if candidates is None:
            candidates = self.candidates = default_sockets()
        failures = []
        for sock_path, where in candidates:
            if self._named and os.path.exists(sock_path) and not stat.S_ISSOCK(os.stat(sock_path).st_mode):
                raise CLIError(f"{where} {sock_path} is {_why_not(sock_path, None)}: point --socket or "
                               "BEIRAN_SOCKET at the daemon's beirand.sock (in its run_dir or data_dir)")
            if not os.path.exists(sock_path) or not stat.S_ISSOCK(os.stat(sock_path).st_mode):
                failures.append(f"{sock_path} ({where}: {_why_not(sock_path, None)})")
                continue
            conn = _UnixConnection(sock_path, self.timeout)
            try:
                conn.request(method, path, body=data, headers=hdrs)
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                failures.append(f"{sock_path} ({where}: {_why_not(sock_path, exc)})")
                continue
            except PermissionError:
                raise CLIError(f"permission denied on {sock_path} ({where}): the admin socket is for root "
                               "and the socket's group") from None
            self.socket_path, self.candidates = sock_path, [(sock_path, where)]
            return conn.getresponse()
        raise DaemonNotRunning(f"the beiran daemon is not running: tried {'; '.join(failures)}; {HINT}")

    def _open(self, method: str, path: str, body: Any = None, raw: Any = None,
              headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
        hdrs = dict(headers or {})
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            hdrs["Content-Type"] = "application/json"
        try:
            return self._connect(method, path, data, hdrs)
        except TimeoutError:
            raise CLIError(f"the beiran daemon at {self.socket_path} did not answer in time") from None
        except OSError as exc:
            raise CLIError(f"cannot talk to the daemon at {self.socket_path}: {exc}") from None

    @staticmethod
    def _raise_for(resp: http.client.HTTPResponse) -> None:
        if resp.status < 400:
            return
        payload = resp.read()
        code = ""
        try:
            err = json.loads(payload)
            message = err.get("message") or err.get("error") or payload.decode()
            code = str(err.get("error") or "")
        except (ValueError, AttributeError):
            message = payload.decode(errors="replace").strip() or resp.reason
        raise DaemonError(f"{message} (HTTP {resp.status})", resp.status, code)

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

    def download(self, path: str, out: Any, chunk: int = 1 << 20, progress: Any = None) -> int:
        """GET `path` into `out`; `progress(bytes_so_far, total_or_None)` after each chunk."""
        resp = self._open("GET", path)
        self._raise_for(resp)
        n = 0
        length = resp.getheader("Content-Length")
        total = int(length) if length is not None and length.isdigit() else None
        if progress is not None:
            progress(0, total)
        while data := resp.read(chunk):
            out.write(data)
            n += len(data)
            if progress is not None:
                progress(n, total)
        if length is not None and length.isdigit() and n != int(length):
            raise CLIError(f"the daemon stopped after {n} of {length} bytes (see the daemon log)")
        return n
