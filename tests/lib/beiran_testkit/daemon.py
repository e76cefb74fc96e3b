"""Start real `beiran daemon` processes, each on its own 127.x.y.z address and data dir."""

from __future__ import annotations

import http.client
import importlib.util
import itertools
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

_NET = itertools.count(random.randrange(250))


def _free(ip: str, port: int) -> bool:
    s = socket.socket()
    try:
        s.bind((ip, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def next_subnet() -> int:
    """A fresh 127.N.M.0/24 per cluster (random, checked free), so concurrent test runs and
    leftovers of one test never answer another."""
    while True:
        n = next(_NET) % 250 + 1
        m = random.randrange(1, 250)
        if all(_free(f"127.{n}.{m}.{i}", 8888) for i in (2, 3, 4)):
            return n * 1000 + m


def _installed(plugin: str) -> bool:
    try:
        return importlib.util.find_spec(f"beiran_plugins.{plugin}") is not None
    except ImportError:
        return False


def _zeroconf_installed() -> bool:
    return _installed("zeroconf")


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value))


def _key(k: str) -> str:
    """A TOML key: bare when it can be, else quoted (registry names such as "127.0.0.1:5000")."""
    return k if k and all(c.isalnum() or c in "_-" for c in k) else json.dumps(k)


def write_toml(path: Path, data: dict[str, Any]) -> None:
    lines: list[str] = []
    tables: list[tuple[str, dict]] = []

    def walk(prefix: str, d: dict) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                tables.append((f"{prefix}{_key(k)}", v))
    for k, v in data.items():
        if not isinstance(v, dict):
            lines.append(f"{k} = {_toml(v)}")
    walk("", data)
    while tables:
        name, table = tables.pop(0)
        scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
        lines.append(f"\n[{name}]")
        lines += [f'{json.dumps(k) if not k.isidentifier() else k} = {_toml(v)}' for k, v in scalars.items()]
        for k, v in table.items():
            if isinstance(v, dict):
                tables.insert(0, (f"{name}.{_key(k)}", v))
    path.write_text("\n".join(lines) + "\n")


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 30) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


class Daemon:
    def __init__(self, base: Path, name: str, ip: str, port: int = 8888,
                 config: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> None:
        self.name, self.ip, self.port = name, ip, port
        self.dir = base / name
        self.data_dir = self.dir / "data"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config: dict[str, Any] = {"data_dir": str(self.data_dir), "listen": f"{ip}:{port}",
                                       "log_level": "debug", "heartbeat_interval": 1.0,
                                       "heartbeat_timeout": 4.0, "store": {"fsync": False}}
        for k, v in (config or {}).items():
            if isinstance(v, dict) and isinstance(self.config.get(k), dict):
                self.config[k] = {**self.config[k], **v}
            else:
                self.config[k] = v
        # mDNS on loopback reaches every daemon of every test running on this machine: zeroconf
        # stays off unless a test configures it (then it should also set its own `cluster`).
        if _zeroconf_installed():
            plugins = dict(self.config.get("plugins") or {})
            plugins.setdefault("zeroconf", {"enabled": False})
            self.config["plugins"] = plugins
        # The apt proxy's default 127.0.0.1:3142 is one port for every daemon on the machine (and
        # apt-cacher-ng's): each test daemon's proxy listens on its own 127.x address instead.
        if _installed("apt"):
            plugins = dict(self.config.get("plugins") or {})
            apt = dict(plugins.get("apt") or {})
            apt.setdefault("listen", f"{ip}:3142")
            plugins["apt"] = apt
            self.config["plugins"] = plugins
        self.env = dict(env or {})
        self.proc: subprocess.Popen | None = None
        self.uuid: str | None = None
        self.log_path = self.dir / "daemon.log"

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{self.port}"

    @property
    def socket(self) -> str:
        return str(self.data_dir / "beirand.sock")

    def start(self, wait: bool = True) -> Daemon:
        cfg = self.dir / "config.toml"
        write_toml(cfg, self.config)
        # no BEIRAN_* setting or proxy of the shell running the tests: only what the test sets
        env = {k: v for k, v in os.environ.items() if not k.startswith("BEIRAN_")
               and k.lower() not in ("http_proxy", "https_proxy", "no_proxy", "all_proxy")}
        if self.config.get("testing"):  # a tampering or throttled node, on purpose
            env["BEIRAN_TESTING_HOOKS"] = "1"
        env.update(self.env)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "beiran", "daemon", "--config", str(cfg)],
                                     stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.dir,
                                     stdin=subprocess.DEVNULL)
        log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                self.uuid = self.api("GET", "/info")["uuid"]
                # The listeners open before plugins start: ready is when every plugin has started (or failed).
                if all(p.get("status") != "init" for p in self.api("GET", "/status").get("plugins", [])):
                    return
                time.sleep(0.05)
            except (OSError, http.client.HTTPException, ValueError):
                time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not start in {timeout}s:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def tracebacks(self, through: str) -> list[str]:
        """Tracebacks in the log that went through files whose path holds `through`
        (e.g. "beiran_plugins/dns/"): a plugin's own, among the others the daemon may log."""
        found = []
        for chunk in self.log().split("Traceback (most recent call last)")[1:]:
            trace = re.split(r"\n\d{4}-\d\d-\d\d ", chunk, maxsplit=1)[0]  # up to the next log record
            if through in trace:
                found.append(trace)
        return found

    # -- talking to it -------------------------------------------------------------------------
    def request(self, method: str, path: str, body: Any = None, raw: bytes | None = None,
                headers: dict[str, str] | None = None, timeout: float = 60) -> tuple[int, dict, bytes]:
        """Over the unix socket (admin). Returns (status, headers, body)."""
        conn = UnixHTTP(self.socket, timeout)
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        conn.request(method, path, body=data, headers=headers or {})
        resp = conn.getresponse()
        payload = resp.read()
        conn.close()
        return resp.status, dict(resp.getheaders()), payload

    def api(self, method: str, path: str, body: Any = None, expect: int | None = 200, **kw: Any) -> Any:
        status, _, payload = self.request(method, path, body, **kw)
        if expect is not None and status != expect:
            raise AssertionError(f"{self.name} {method} {path}: {status} {payload[:500]!r}")
        try:
            return json.loads(payload)
        except ValueError:
            return payload

    def tcp(self, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None, timeout: float = 30) -> tuple[int, dict, bytes]:
        """Over TCP, as a peer or package client would."""
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def peer_get(self, path: str, headers: dict[str, str] | None = None, timeout: float = 20) -> tuple[int, bytes]:
        """GET `path` over TCP as a peer would ask (sign with `fakepeer.auth_headers`): (status, body)."""
        status, _, body = self.tcp("GET", path, headers=headers, timeout=timeout)
        return status, body

    def add_blob(self, data: bytes) -> str:
        return self.api("PUT", "/blobs/upload", raw=data)["digest"]

    def fetch(self, digest: str, size: int | None = None, source: dict | None = None,
              timeout: float = 120) -> dict:
        """Run a cluster fetch through the admin API; returns the final progress line."""
        _, _, payload = self.request("POST", "/blobs?cmd=fetch",
                                     {"digest": digest, "size": size, "source": source}, timeout=timeout)
        lines = [json.loads(x) for x in payload.splitlines() if x.strip()]
        if not lines:
            raise AssertionError(f"{self.name}: fetch gave no answer: {payload[:300]!r}")
        return lines[-1]

    def blob(self, digest: str) -> bytes:
        status, _, payload = self.request("GET", f"/blobs/{digest}", timeout=120)
        assert status == 200, (status, payload[:200])
        return payload

    def metrics(self) -> dict[str, float]:
        return self.api("GET", "/stats")["metrics"]

    def nodes(self, all: bool = False) -> list[dict]:
        return self.api("GET", "/nodes" + ("?all=true" if all else ""))["nodes"]

    def online_peers(self) -> set[str]:
        return {n["uuid"] for n in self.nodes() if n.get("status") == "online"}

    def entry(self, other: Daemon) -> dict:
        """What this node knows of `other` (status, found_by, ...), or an 'unknown' stand-in."""
        return next((n for n in self.nodes(all=True) if n["uuid"] == other.uuid),
                    {"status": "unknown", "found_by": []})

    def cli(self, *args: str) -> Any:
        """`beiran --socket SOCK ARGS`, for real; JSON parsed when --json is given."""
        out = subprocess.run([sys.executable, "-m", "beiran", "--socket", self.socket, *args],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout) if "--json" in args else out.stdout

    # -- stopping --------------------------------------------------------------------------------
    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        return self.wait_stopped(timeout)

    def wait_stopped(self, timeout: float = 10) -> int | None:
        """Wait for the process to exit (a signal was sent); killed when it takes over `timeout`."""
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def wait_until(predicate: Any, timeout: float = 10, interval: float = 0.05, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except (OSError, http.client.HTTPException, AssertionError, ValueError, KeyError):
            pass
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
