"""Debian's tinyproxy as the corporate forward proxy: its log names every request it relayed and every
upstream `host:port` it opened, so a test can tell which requests went through it."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

from beiran_testkit.procs import stop_process
from beiran_testkit.registry import free_port


def tinyproxy_missing() -> str | None:
    return None if shutil.which("tinyproxy") else "tinyproxy is not installed (apt-get install tinyproxy)"


class Tinyproxy:
    def __init__(self, root: Path, host: str = "127.0.0.1") -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.port = free_port(host)
        self.log_path = root / "tinyproxy.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 10) -> Tinyproxy:
        conf = self.root / "tinyproxy.conf"
        conf.write_text(f'Port {self.port}\nListen {self.host}\nAllow 127.0.0.0/8\nLogFile "{self.log_path}"\n'
                        "LogLevel Info\nMaxClients 100\nTimeout 60\n")
        self.proc = subprocess.Popen(["tinyproxy", "-d", "-c", str(conf)], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, close_fds=True)
        deadline = time.monotonic() + timeout
        while "Accepting connections" not in self.log():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tinyproxy did not start:\n{self.log()[-2000:]}")
            time.sleep(0.05)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def requests(self) -> list[str]:
        """Every request line relayed: "GET http://host:port/path HTTP/1.1", "CONNECT host:port HTTP/1.1"."""
        return re.findall(r"Request \(file descriptor \d+\): (.+)", self.log())

    def upstreams(self) -> list[str]:
        """Every `host:port` it opened a connection to."""
        return re.findall(r"opening connection to (\S+)", self.log())

    def stop(self) -> None:
        stop_process(self.proc)
