"""A real DNS server for discovery tests: Debian's dnsmasq on a loopback address, serving only the
records a test gives it (SRV and A/AAAA), plus a black-hole server that never answers.

dnsmasq cannot reload SRV records, so `set_records` restarts it on the same address and port.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

from beiran_testkit.procs import stop_process

DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"


def dnsmasq_missing() -> str | None:
    """Why dnsmasq cannot run here (None when it can)."""
    if not Path(DNSMASQ).exists():
        return "dnsmasq is not installed (apt-get install dnsmasq-base)"
    return None


def free_port(ip: str) -> int:
    """A port free for both UDP and TCP on `ip`."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind((ip, 0))
            port = u.getsockname()[1]
            with socket.socket() as t:
                try:
                    t.bind((ip, port))
                    return port
                except OSError:
                    continue
    raise RuntimeError(f"no free port on {ip}")


class Dnsmasq:
    """`srv`: {"_beiran._tcp.beiran.test": [("n1.beiran.test", 8888), ...]};
    `hosts`: {"n1.beiran.test": ["127.0.0.2", "::1"]}. Unknown names in `domain` get NXDOMAIN (as
    from an authoritative server), names elsewhere REFUSED (nothing is forwarded)."""

    def __init__(self, base: Path, ip: str = "127.0.0.1", port: int | None = None, ttl: int = 1,
                 domain: str = "beiran.test", netns: str | None = None) -> None:
        self.dir, self.domain = base, domain
        self.netns = netns  # a network namespace path: dnsmasq runs inside it (via nsenter)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ip, self.port, self.ttl = ip, port or free_port(ip), ttl
        self.srv: dict[str, list[tuple[str, int]]] = {}
        self.hosts: dict[str, list[str]] = {}
        self.proc: subprocess.Popen | None = None
        self.log_path = self.dir / "dnsmasq.log"

    @property
    def address(self) -> str:
        """As `[plugins.dns] nameservers` takes it."""
        return f"{self.ip}:{self.port}"

    def set_records(self, srv: dict[str, Iterable[tuple[str, int]]] | None = None,
                    hosts: dict[str, Iterable[str]] | None = None) -> Dnsmasq:
        self.srv = {k: list(v) for k, v in (srv if srv is not None else self.srv).items()}
        self.hosts = {k: list(v) for k, v in (hosts if hosts is not None else self.hosts).items()}
        self.stop()
        return self.start()

    def start(self) -> Dnsmasq:
        args = [DNSMASQ, "--no-daemon", "--conf-file=/dev/null", "--pid-file=", "--user=root",
                f"--port={self.port}", f"--listen-address={self.ip}", "--bind-interfaces", "--no-resolv",
                "--no-hosts", f"--local-ttl={self.ttl}", f"--local=/{self.domain}/", "--log-queries",
                "--log-facility=-"]
        for name, addrs in self.hosts.items():
            args.append(f"--host-record={name},{','.join(addrs)}")
        for name, targets in self.srv.items():
            args += [f"--srv-host={name},{host},{port},0,10" for host, port in targets]
        if self.netns:
            args = ["nsenter", f"--net={self.netns}", "--", *args]
        offset = len(self.log())
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dnsmasq exited with {self.proc.returncode}: {self.log()[-2000:]}")
            if self.netns:  # not reachable from here: its log says when it serves
                if "started, version" in self.log()[offset:]:
                    return self
            else:
                with socket.socket() as s:  # TCP answers once the UDP side is up too
                    if s.connect_ex((self.ip, self.port)) == 0:
                        return self
            time.sleep(0.02)
        raise RuntimeError(f"dnsmasq did not start: {self.log()[-2000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        stop_process(self.proc, 5)
        self.proc = None


class BlackHoleDNS:
    """A UDP (and TCP) port that takes queries and never answers: a DNS server that times out."""

    def __init__(self, ip: str = "127.0.0.1") -> None:
        self.ip = ip
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind((ip, 0))
        self.port = self.udp.getsockname()[1]
        self.tcp = socket.socket()
        try:
            self.tcp.bind((ip, self.port))
            self.tcp.listen(16)
        except OSError:
            self.tcp.close()

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.port}"

    def close(self) -> None:
        self.udp.close()
        self.tcp.close()
