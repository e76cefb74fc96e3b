"""containerd started by a test (own root, state, socket; no /opt, no /run/containerd), and `ctr`."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from beiran_testkit.procs import stop_process


class Containerd:
    def __init__(self, cri_registry_dir: Path | None = None) -> None:
        # short paths: unix socket paths are limited to 108 bytes
        self.dir = Path(tempfile.mkdtemp(prefix="ctd-", dir="/tmp"))
        self.socket = str(self.dir / "c.sock")
        self.cri_registry_dir = cri_registry_dir
        self.proc: subprocess.Popen | None = None

    @property
    def content_dir(self) -> Path:
        """The content store (`blobs/sha256/<hex>`), as `[plugins.docker] containerd_content_dir`."""
        return self.dir / "root" / "io.containerd.content.v1.content"

    def start(self, timeout: float = 20) -> Containerd:
        cfg = self.dir / "config.toml"
        lines = ["version = 2", f'root = "{self.dir}/root"', f'state = "{self.dir}/state"']
        if self.cri_registry_dir is None:
            lines.append('disabled_plugins = ["io.containerd.grpc.v1.cri"]')
        lines += ["[grpc]", f'  address = "{self.socket}"',
                  '[plugins."io.containerd.internal.v1.opt"]', f'  path = "{self.dir}/opt"']
        if self.cri_registry_dir is not None:
            lines += ['[plugins."io.containerd.grpc.v1.cri"]', '  stream_server_address = "127.0.0.1"',
                      '[plugins."io.containerd.grpc.v1.cri".registry]',
                      f'  config_path = "{self.cri_registry_dir}"']
        cfg.write_text("\n".join(lines) + "\n")
        log = open(self.dir / "containerd.log", "ab")
        self.proc = subprocess.Popen(["containerd", "--config", str(cfg)], stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"containerd exited: {self.log()[-2000:]}")
            if Path(self.socket).exists() and self.ctr("version", check=False).returncode == 0:
                return self
            time.sleep(0.1)
        raise RuntimeError(f"containerd did not start: {self.log()[-2000:]}")

    def log(self) -> str:
        p = self.dir / "containerd.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def ctr(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        proc = subprocess.run(["ctr", "-a", self.socket, *args], capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args)} failed: {proc.stderr.strip()[-2000:]}")
        return proc

    def hosts_dir(self, registry: str, mirror: str, scheme: str = "http") -> Path:
        """`DIR/<registry>/hosts.toml` sending pulls of `registry` to the mirror `host:port` first."""
        d = self.dir / "hosts"
        (d / registry).mkdir(parents=True, exist_ok=True)
        (d / registry / "hosts.toml").write_text(
            f'server = "{scheme}://{registry}"\n\n[host."http://{mirror}"]\n  capabilities = ["pull", "resolve"]\n')
        return d

    def pull(self, ref: str, hosts_dir: Path | None = None, plain_http: bool = False,
             check: bool = True) -> subprocess.CompletedProcess:
        args = ["images", "pull", "--snapshotter", "native"]
        if hosts_dir is not None:
            args += ["--hosts-dir", str(hosts_dir)]
        if plain_http:
            args.append("--plain-http")
        return self.ctr(*args, ref, check=check)

    def blob(self, digest: str) -> bytes:
        return (self.content_dir / "blobs" / "sha256" / digest.split(":")[1]).read_bytes()

    def stop(self) -> None:
        stop_process(self.proc, 15)
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        subprocess.run(["umount", "-R", str(self.dir / "root")], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)
