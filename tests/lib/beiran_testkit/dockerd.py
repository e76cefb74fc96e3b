"""A Docker engine started by a test: vfs storage, no iptables or bridge, its own dirs and socket."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from beiran_testkit.daemon import UnixHTTP
from beiran_testkit.procs import stop_process


class Dockerd:
    def __init__(self, daemon_json: dict[str, Any] | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="dkd-", dir="/tmp"))  # short: socket paths
        self.socket = str(self.dir / "docker.sock")
        self.daemon_json = daemon_json or {}
        self.proc: subprocess.Popen | None = None

    @property
    def host(self) -> str:
        """For DOCKER_HOST or `[plugins.docker] docker_host`."""
        return f"unix://{self.socket}"

    def start(self, timeout: float = 30) -> Dockerd:
        cfg = self.dir / "daemon.json"
        cfg.write_text(json.dumps(self.daemon_json))
        log = open(self.dir / "dockerd.log", "ab")
        self.proc = subprocess.Popen(
            ["dockerd", "--config-file", str(cfg), "--storage-driver=vfs", "--iptables=false",
             "--ip6tables=false", "--ip-masq=false", "--bridge=none", "--data-root", str(self.dir / "data"),
             "--exec-root", str(self.dir / "exec"), "--pidfile", str(self.dir / "docker.pid"),
             "-H", self.host],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dockerd exited: {self.log()[-2000:]}")
            try:
                conn = UnixHTTP(self.socket, timeout=2)
                conn.request("GET", "/_ping")
                if conn.getresponse().status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"dockerd did not start: {self.log()[-2000:]}")

    def log(self) -> str:
        p = self.dir / "dockerd.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def docker(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        """The docker CLI against this engine."""
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME": str(self.dir),
               "DOCKER_HOST": self.host, "DOCKER_CONFIG": str(self.dir / "cli")}
        proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, env=env)
        if check and proc.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args)} failed: {proc.stderr.strip()[-2000:]}")
        return proc

    def images(self) -> list[dict[str, Any]]:
        conn = UnixHTTP(self.socket, timeout=10)
        conn.request("GET", "/images/json")
        return json.loads(conn.getresponse().read())

    def stop(self) -> None:
        stop_process(self.proc, 20)
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        subprocess.run(["umount", "-R", str(self.dir / "exec")], capture_output=True)
        subprocess.run(["umount", "-R", str(self.dir / "data")], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)
