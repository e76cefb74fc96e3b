"""Debian's docker-registry (Distribution) as an origin on loopback, behind a counting proxy.

Clients and mirrors talk to the proxy (`Registry.name`, e.g. "127.0.0.1:41234"); pushes go straight
to the registry. The proxy counts every request, and on command answers with an error status, serves
other bytes (tampering), or demands upstream auth (Bearer token flow or Basic) like a real registry.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import secrets
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from beiran_testkit.procs import serve_in_thread, stop_process, stop_server

_BLOB = re.compile(r"^/v2/(.+)/blobs/(sha256:[0-9a-f]{64})$")
_MANIFEST = re.compile(r"^/v2/(.+)/manifests/([^/]+)$")


def free_port(host: str = "127.0.0.1") -> int:
    s = socket.socket()
    s.bind((host, 0))
    port = s.getsockname()[1]
    s.close()
    return port


class CountingProxy:
    """A reverse proxy that records (method, path) of every request and can misbehave on purpose."""

    def __init__(self, upstream: tuple[str, int], host: str = "127.0.0.1", port: int = 0) -> None:
        self.upstream = upstream
        self.host, self.port = host, port or free_port(host)
        self.log: list[tuple[str, str]] = []
        self.headers_seen: list[dict[str, Any]] = []
        self.fail: dict[str, tuple[int, bytes]] = {}  # path regex -> (status, body)
        self.replace: dict[str, bytes] = {}  # path regex -> body served instead (headers kept)
        self.hold: dict[str, threading.Event] = {}  # path regex -> answered once the event is set
        #: {"scheme": "bearer"|"basic", "user", "password", "refresh_token"}: what the registry demands
        self.auth: dict[str, Any] | None = None
        self.tokens: set[str] = set()
        self.token_requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None

    # -- counting --------------------------------------------------------------------------------
    def reset(self) -> None:
        with self._lock:
            self.log.clear()
            self.headers_seen.clear()
            self.token_requests.clear()
        self.fail.clear()
        self.replace.clear()
        for event in self.hold.values():
            event.set()
        self.hold.clear()
        self.auth = None

    def blob_gets(self) -> Counter[str]:
        """digest -> number of GETs of that blob."""
        with self._lock:
            return Counter(m.group(2) for meth, p in self.log if meth == "GET" and (m := _BLOB.match(p)))

    def manifest_requests(self) -> list[tuple[str, str]]:
        with self._lock:
            return [(meth, p) for meth, p in self.log if _MANIFEST.match(p)]

    def count(self) -> int:
        with self._lock:
            return len(self.log)

    # -- serving ---------------------------------------------------------------------------------
    def start(self) -> CountingProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                proxy._handle(self)

            do_HEAD = do_POST = do_GET

        self.server = serve_in_thread(Handler, self.host, self.port)
        return self

    def stop(self) -> None:
        stop_server(self.server)
        self.server = None

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        path = urlsplit(h.path).path
        if path == "/token":
            self._token(h)
            return
        with self._lock:
            self.log.append((h.command, path))
            self.headers_seen.append({"method": h.command, "path": path,
                                      "accept": h.headers.get_all("Accept") or [],
                                      "range": h.headers.get("Range")})
        if self.auth and not self._authorized(h, path):
            return
        for pattern, event in list(self.hold.items()):
            if re.search(pattern, path):
                event.wait(60)
        for pattern, (status, body) in list(self.fail.items()):
            if re.search(pattern, path):
                self._send(h, status, {"Content-Type": "application/json"}, body)
                return
        conn = http.client.HTTPConnection(*self.upstream, timeout=30)
        headers = {k: v for k, v in h.headers.items() if k.lower() in ("range", "user-agent")}
        accept = h.headers.get_all("Accept")
        if accept:
            headers["Accept"] = ", ".join(accept)
        try:
            conn.request(h.command, h.path, headers=headers)
            resp = conn.getresponse()
        except OSError:
            self._send(h, 502, {}, b"registry down")
            return
        out = {k: v for k, v in resp.getheaders()
               if k.lower() not in ("transfer-encoding", "connection", "content-length")}
        body_override = next((b for p, b in self.replace.items() if re.search(p, path)), None)
        length = resp.getheader("Content-Length")
        if body_override is not None or length is None or h.command == "HEAD":
            data = resp.read()
            if body_override is not None:
                data = body_override
            h.send_response(resp.status)
            for k, v in out.items():
                h.send_header(k, v)
            h.send_header("Content-Length", str(len(data) if h.command != "HEAD" or body_override is not None
                                               else int(length or 0)))
            h.end_headers()
            if h.command != "HEAD":
                h.wfile.write(data)
            conn.close()
            return
        h.send_response(resp.status)
        for k, v in out.items():
            h.send_header(k, v)
        h.send_header("Content-Length", length)
        h.end_headers()
        try:
            while chunk := resp.read(1 << 20):
                h.wfile.write(chunk)
        except OSError:
            h.close_connection = True
        conn.close()

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, headers: dict[str, str], body: bytes) -> None:
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)

    # -- upstream auth (what Docker Hub and friends do) ------------------------------------------
    def _authorized(self, h: BaseHTTPRequestHandler, path: str) -> bool:
        auth = self.auth or {}
        given = h.headers.get("Authorization", "")
        denied = json.dumps({"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]})
        if auth["scheme"] == "basic":
            want = "Basic " + base64.b64encode(f"{auth['user']}:{auth['password']}".encode()).decode()
            if given == want:
                return True
            challenge = 'Basic realm="test registry"'
        else:
            if given.startswith("Bearer ") and given[7:] in self.tokens:
                return True
            m = _MANIFEST.match(path) or _BLOB.match(path)
            scope = f',scope="repository:{m.group(1)}:pull"' if m else ""
            challenge = f'Bearer realm="http://{self.host}:{self.port}/token",service="test-registry"{scope}'
        self._send(h, 401, {"WWW-Authenticate": challenge, "Content-Type": "application/json"}, denied.encode())
        return False

    def _token(self, h: BaseHTTPRequestHandler) -> None:
        auth = self.auth or {}
        query = parse_qs(urlsplit(h.path).query)
        given = h.headers.get("Authorization", "")
        form: dict[str, list[str]] = {}
        if h.command == "POST":  # OAuth2: a refresh token (docker's identity token) in a form
            form = parse_qs(h.rfile.read(int(h.headers.get("Content-Length") or 0)).decode())
        with self._lock:
            self.token_requests.append({"method": h.command, "query": query, "form": form,
                                        "authorization": given})
        oauth = form.get("grant_type") == ["refresh_token"]
        if oauth:
            refused = b"bad refresh token" if form.get("refresh_token") != [auth.get("refresh_token")] else None
        elif auth.get("user"):
            want = "Basic " + base64.b64encode(f"{auth['user']}:{auth['password']}".encode()).decode()
            refused = b"bad credentials" if given != want else None
        else:
            refused = None  # anonymous tokens
        if refused:
            self._send(h, 401, {"Content-Type": "application/json"}, b'{"details": "' + refused + b'"}')
            return
        token = secrets.token_hex(16)
        self.tokens.add(token)
        body = json.dumps({"access_token" if oauth else "token": token, "expires_in": 300}).encode()
        self._send(h, 200, {"Content-Type": "application/json"}, body)


class Registry:
    """`docker-registry serve` on 127.0.0.1 with filesystem storage, plus its counting proxy."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.proxy = CountingProxy(("127.0.0.1", self.port))

    @property
    def push_name(self) -> str:
        """Where skopeo pushes (the registry itself, not counted)."""
        return f"127.0.0.1:{self.port}"

    @property
    def name(self) -> str:
        """What clients and mirrors use: the counting proxy."""
        return f"{self.proxy.host}:{self.proxy.port}"

    @property
    def url(self) -> str:
        return f"http://{self.name}"

    def start(self) -> Registry:
        cfg = self.root / "config.yml"
        storage = self.root / "storage"
        cfg.write_text(f"""version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{self.port}
""")
        log = open(self.root / "registry.log", "ab")
        self.proc = subprocess.Popen(["docker-registry", "serve", str(cfg)], stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {(self.root / 'registry.log').read_text()[-2000:]}")
            try:
                urllib.request.urlopen(f"http://{self.push_name}/v2/", timeout=1).read()
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError("docker-registry did not start")
        if self.proxy.server is None:
            self.proxy.start()
        return self

    def stop(self) -> None:
        """Stop the registry and its proxy: connections are refused, as with a dead origin."""
        self.proxy.stop()
        stop_process(self.proc, 10)
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and self.proxy.server is not None

    def manifest(self, repo: str, ref: str, accept: str = "*/*") -> tuple[bytes, dict[str, str]]:
        """Straight from the registry (not counted)."""
        req = urllib.request.Request(f"http://{self.push_name}/v2/{repo}/manifests/{ref}",
                                     headers={"Accept": accept})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.read(), dict(resp.headers)

    def put_blob(self, repo: str, data: bytes) -> None:
        """Monolithic upload straight to the registry (for media types skopeo's oci: will not read)."""
        base = f"http://{self.push_name}"
        req = urllib.request.Request(f"{base}/v2/{repo}/blobs/uploads/", method="POST", data=b"")
        with urllib.request.urlopen(req, timeout=30) as resp:
            location = resp.headers["Location"]
        digest = "sha256:" + __import__("hashlib").sha256(data).hexdigest()
        sep = "&" if "?" in location else "?"
        url = (location if location.startswith("http") else base + location) + f"{sep}digest={digest}"
        req = urllib.request.Request(url, method="PUT", data=data,
                                     headers={"Content-Type": "application/octet-stream"})
        urllib.request.urlopen(req, timeout=60).read()

    def put_manifest(self, repo: str, ref: str, data: bytes, media_type: str) -> None:
        req = urllib.request.Request(f"http://{self.push_name}/v2/{repo}/manifests/{ref}", method="PUT",
                                     data=data, headers={"Content-Type": media_type})
        urllib.request.urlopen(req, timeout=30).read()

    def registries_conf(self, path: Path, mirror: str) -> Path:
        """A containers-registries.conf(5) sending this registry's pulls to `mirror` (host:port)."""
        path.write_text(f'[[registry]]\nlocation = "{self.name}"\ninsecure = true\n\n'
                        f'[[registry.mirror]]\nlocation = "{mirror}"\ninsecure = true\n')
        return path


def skopeo_copy(src: str, dest: str, registries_conf: Path | None = None, extra: list[str] | None = None,
                timeout: float = 300) -> subprocess.CompletedProcess:
    """`skopeo [--registries-conf F] copy --src-tls-verify=false SRC DEST`; returns the result."""
    cmd = ["skopeo"]
    if registries_conf is not None:
        cmd += ["--registries-conf", str(registries_conf)]
    cmd += ["copy", "--quiet", "--src-tls-verify=false", *(extra or []), src, dest]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def docker_config(reg: Registry, **extra: Any) -> dict[str, Any]:
    """Daemon config: the test registry is the default one, over http; no Docker engine unless asked;
    other plugins off (in the dev loop every plugin of the source tree would load)."""
    section = {"default_registry": reg.name, "registries": {reg.name: {"url": reg.url}}, "engine": False,
               **extra}
    others = {name: {"enabled": False} for name in ("apt", "npm", "dns", "k8s", "zeroconf")}
    return {"plugins": {**others, "docker": section}}


def beiran(daemon: Any, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    """Run the `beiran` CLI against a daemon's socket."""
    proc = subprocess.run([sys.executable, "-m", "beiran", "--socket", daemon.socket, *args],
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"beiran {' '.join(args)} failed ({proc.returncode}): {proc.stderr}\n{proc.stdout}")
    return proc


def oci_error(body: bytes) -> str:
    return json.loads(body)["errors"][0]["code"]


def mirror_of(daemon: Any) -> str:
    return f"{daemon.ip}:{daemon.port}"


def tree_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def readme_blocks(readme: Path, lang: str) -> list[str]:
    """The fenced code blocks of one language in a README, as written."""
    blocks = re.findall(rf"```{re.escape(lang)}\n(.*?)```", readme.read_text(), re.S)
    return list(blocks)
