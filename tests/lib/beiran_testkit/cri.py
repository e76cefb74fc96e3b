"""containerd with its CRI plugin (own root, state, socket and hosts.toml dir), a CRI gRPC client
built from the k8s plugin's own proto (kubelet's part; no crictl or kubelet exists here), and a
Debian docker-registry with htpasswd auth whose access log tells what it served."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from beiran_testkit.procs import stop_process
from beiran_testkit.registry import free_port

CONTAINERD_CONFIG = """\
version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{socket}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  stats_collect_period = 1
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "{snapshotter}"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{certs}"
"""


class Containerd:
    """`containerd --config` with the CRI plugin; the socket lives in a short /tmp dir (108-byte limit)."""

    def __init__(self, base: Path, snapshotter: str = "native", netns: str | None = None) -> None:
        self.base = base
        self.netns = netns  # a network namespace path: containerd runs inside it (via nsenter)
        self.base.mkdir(parents=True, exist_ok=True)
        self.sockdir = Path(tempfile.mkdtemp(prefix="ctd-", dir="/tmp"))
        self.socket = str(self.sockdir / "containerd.sock")
        self.certs = self.base / "certs.d"
        self.snapshotter = snapshotter
        self.proc: subprocess.Popen | None = None
        self.log_path = self.base / "containerd.log"

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    def start(self, timeout: float = 20) -> Containerd:
        self.certs.mkdir(parents=True, exist_ok=True)
        cfg = self.base / "containerd.toml"
        cfg.write_text(CONTAINERD_CONFIG.format(
            root=self.base / "root", state=self.sockdir / "state", socket=self.socket, opt=self.base / "opt",
            certs=self.certs, snapshotter=self.snapshotter))
        offset = len(self.log())
        log = open(self.log_path, "ab")
        prefix = ["nsenter", f"--net={self.netns}", "--"] if self.netns else []
        self.proc = subprocess.Popen([*prefix, "containerd", "--config", str(cfg)], stdout=log,
                                     stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"containerd exited: {self.log()[-2000:]}")
            if Path(self.socket).exists() and "containerd successfully booted" in self.log()[offset:]:
                return self
            time.sleep(0.05)
        raise RuntimeError(f"containerd did not start in {timeout}s: {self.log()[-2000:]}")

    def stop(self) -> None:
        stop_process(self.proc, 15)
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.sockdir, ignore_errors=True)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def hosts(self, registry: str, server: str, mirrors: list[str] = ()) -> Path:
        """`certs.d/<registry>/hosts.toml`: try `mirrors` (http://host:port) first, then `server`."""
        d = self.certs / registry
        d.mkdir(parents=True, exist_ok=True)
        lines = [f'server = "{server}"']
        for m in mirrors:
            lines += ["", f'[host."{m}"]', '  capabilities = ["pull", "resolve"]']
        (d / "hosts.toml").write_text("\n".join(lines) + "\n")
        return d / "hosts.toml"

    def ctr(self, *args: str, timeout: float = 60) -> str:
        """`ctr -a SOCK -n k8s.io ARGS` (CRI images live in namespace k8s.io)."""
        proc = subprocess.run(["ctr", "-a", self.socket, "-n", "k8s.io", *args], capture_output=True, text=True,
                              timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    def image_refs(self) -> list[str]:
        """Names `ctr -n k8s.io images ls -q` lists."""
        return [line.strip() for line in self.ctr("images", "ls", "-q").splitlines() if line.strip()]


class CRIClient:
    """kubelet's side of the CRI ImageService, from beiran_plugins.k8s.proto (the installed plugin)."""

    def __init__(self, endpoint: str, timeout: float = 120) -> None:
        import grpc

        from beiran_plugins.k8s.proto import api_pb2, api_pb2_grpc

        self.pb = api_pb2
        self.endpoint = endpoint if "://" in endpoint else f"unix://{endpoint}"
        self.channel = grpc.insecure_channel(self.endpoint)
        self.stub = api_pb2_grpc.ImageServiceStub(self.channel)
        self.timeout = timeout

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> CRIClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def spec(self, image: str) -> Any:
        return self.pb.ImageSpec(image=image)

    def pull(self, image: str, username: str = "", password: str = "", server: str = "",
             timeout: float | None = None, identity_token: str = "", registry_token: str = "") -> str:
        auth = None
        if username or password or identity_token or registry_token:
            auth = self.pb.AuthConfig(username=username, password=password, server_address=server,
                                      identity_token=identity_token, registry_token=registry_token)
        sandbox = self.pb.PodSandboxConfig(metadata=self.pb.PodSandboxMetadata(
            name="test-pod", uid="0b5c8f2e", namespace="default"))
        req = self.pb.PullImageRequest(image=self.spec(image), auth=auth, sandbox_config=sandbox)
        return self.stub.PullImage(req, timeout=timeout or self.timeout).image_ref

    def list(self, image: str | None = None) -> list[Any]:
        flt = self.pb.ImageFilter(image=self.spec(image)) if image else None
        return list(self.stub.ListImages(self.pb.ListImagesRequest(filter=flt), timeout=self.timeout).images)

    def status(self, image: str, verbose: bool = False) -> Any:
        return self.stub.ImageStatus(self.pb.ImageStatusRequest(image=self.spec(image), verbose=verbose),
                                     timeout=self.timeout)

    def remove(self, image: str) -> None:
        self.stub.RemoveImage(self.pb.RemoveImageRequest(image=self.spec(image)), timeout=self.timeout)

    def fs_info(self) -> Any:
        return self.stub.ImageFsInfo(self.pb.ImageFsInfoRequest(), timeout=self.timeout)

    def raw(self, method: str, payload: bytes, timeout: float = 30) -> bytes:
        """Call `/runtime.v1.ImageService/<method>` with arbitrary bytes (a malformed request)."""
        call = self.channel.unary_unary(f"/runtime.v1.ImageService/{method}",
                                        request_serializer=lambda b: b, response_deserializer=lambda b: b)
        return call(payload, timeout=timeout)


def bcrypt_hash(password: str) -> str:
    import bcrypt

    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()


_ACCESS = re.compile(r'"(GET|HEAD) (\S+) HTTP/[\d.]+" (\d{3})')
_BLOB_PATH = re.compile(r"^/v2/.+/blobs/(sha256:[0-9a-f]{64})")


class PrivateRegistry:
    """`docker-registry serve` with htpasswd auth (bcrypt), plain HTTP on 127.0.0.1. It has no proxy in
    front (a proxy would have to forward credentials): what it served is read from its access log."""

    def __init__(self, root: Path, users: dict[str, str]) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.users = users
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = self.root / "registry.log"

    @property
    def name(self) -> str:
        return f"127.0.0.1:{self.port}"

    push_name = name

    @property
    def url(self) -> str:
        return f"http://{self.name}"

    def start(self) -> PrivateRegistry:
        (self.root / "htpasswd").write_text("".join(f"{u}:{bcrypt_hash(p)}\n" for u, p in self.users.items()))
        cfg = self.root / "config.yml"
        cfg.write_text(f"""version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {self.root / 'storage'}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{self.port}
auth:
  htpasswd:
    realm: beiran-test
    path: {self.root / 'htpasswd'}
""")
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(["docker-registry", "serve", str(cfg)], stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {self.log_path.read_text()[-2000:]}")
            try:
                urllib.request.urlopen(f"{self.url}/v2/", timeout=1)
            except urllib.error.HTTPError as exc:
                if exc.code == 401:
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("docker-registry (htpasswd) did not start")

    def stop(self) -> None:
        stop_process(self.proc, 10)
        self.proc = None

    def push(self, layout: Any, name: str, repo: str, user: str) -> None:
        """skopeo copy from an oci layout (beiran_testkit.oci.Layout) with credentials."""
        cmd = ["skopeo", "copy", "--quiet", "--dest-tls-verify=false", "--preserve-digests",
               "--dest-creds", f"{user}:{self.users[user]}", f"oci:{layout.root}:{name}",
               f"docker://{self.name}/{repo}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"skopeo push to the private registry failed: {proc.stderr.strip()}")

    def access(self) -> list[tuple[str, str, int]]:
        """(method, path, status) of every request the registry logged."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return [(m.group(1), m.group(2).split("?")[0], int(m.group(3))) for m in _ACCESS.finditer(text)]

    def blobs_served(self) -> Counter[str]:
        """digest -> number of successful blob GETs."""
        return Counter(m.group(1) for meth, path, status in self.access()
                       if meth == "GET" and status in (200, 206) and (m := _BLOB_PATH.match(path)))


def auth_header(user: str, password: str) -> dict[str, str]:
    import base64

    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def dump(obj: Any) -> str:
    """A protobuf message as JSON-ish text for assertion messages."""
    from google.protobuf.json_format import MessageToDict

    return json.dumps(MessageToDict(obj), indent=1)
