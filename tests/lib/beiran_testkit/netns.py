"""Network namespaces for discovery tests: a bridge in a namespace of its own and N hosts, each in
its own namespace, joined to it by veth pairs. The addresses exist only inside those namespaces, so
nodes talk over a real (virtual) link, multicast included, and nothing reaches the machine's network.

Daemons run inside a host namespace through `nsenter --net=...`; the test still talks to them over
their unix socket (a filesystem path works from any network namespace). Everything is deleted at
the end; namespaces left by a killed test run (its PID is in their names) are swept on the next run.
"""

from __future__ import annotations

import itertools
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from beiran_testkit.daemon import Daemon, write_toml

PREFIX = "bzt"
_COUNT = itertools.count(1)
NETNS_DIR = Path("/run/netns")


def netns_unavailable() -> str | None:
    """Why this machine cannot run namespace tests (None when it can)."""
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    for tool in ("ip", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install iproute2 util-linux)"
    probe = f"{PREFIX}probe{os.getpid()}"
    out = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if out.returncode != 0:
        return f"this machine cannot create network namespaces: {out.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _sweep_stale() -> None:
    """Delete namespaces of test runs that no longer exist."""
    if not NETNS_DIR.is_dir():
        return
    for entry in NETNS_DIR.iterdir():
        name = entry.name
        if not name.startswith(PREFIX) or "-" not in name:
            continue
        pid = name[len(PREFIX):].split("-", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        except PermissionError:
            pass


@dataclass
class Host:
    index: int
    netns: str
    ip: str
    ip6: str | None

    @property
    def path(self) -> str:
        return str(NETNS_DIR / self.netns)


class NetnsDaemon(Daemon):
    """A Daemon started inside a network namespace."""

    def __init__(self, host: Host, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.host = host

    def start(self, wait: bool = True) -> NetnsDaemon:
        cfg = self.dir / "config.toml"
        write_toml(cfg, self.config)
        env = {k: v for k, v in os.environ.items() if not k.startswith("BEIRAN_")}
        env.update(self.env)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                ["nsenter", f"--net={self.host.path}", "--", sys.executable, "-m", "beiran", "daemon",
                 "--config", str(cfg)],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.dir, stdin=subprocess.DEVNULL)
        if wait:
            self.wait_ready()
        return self


class NetnsLan:
    def __init__(self, base: Path, n: int, ipv6: bool = False) -> None:
        self.base = base
        self.tag = f"{PREFIX}{os.getpid()}-{next(_COUNT)}"
        self.subnet = f"10.{random.randrange(1, 255)}.{random.randrange(0, 255)}"
        self.v6 = f"fd{random.randrange(256):02x}:{random.randrange(1 << 16):x}::" if ipv6 else None
        self.bridge = f"{self.tag}-br"
        self.hosts = [Host(i, f"{self.tag}-{i + 1}", f"{self.subnet}.{i + 1}",
                           f"{self.v6}{i + 1}" if self.v6 else None) for i in range(n)]
        self.daemons: list[NetnsDaemon] = []
        self.created: list[str] = []

    def _ip(self, *args: str) -> None:
        out = subprocess.run(["ip", *args], capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"ip {' '.join(args)}: {out.stderr.strip()}")

    def _netns(self, name: str) -> None:
        self._ip("netns", "add", name)
        self.created.append(name)
        self._ip("-n", name, "link", "set", "lo", "up")

    def create(self) -> NetnsLan:
        _sweep_stale()
        try:
            self._netns(self.bridge)
            self._ip("-n", self.bridge, "link", "add", "br0", "type", "bridge")
            self._ip("-n", self.bridge, "link", "set", "br0", "up")
            for h in self.hosts:
                self._netns(h.netns)
                port = f"p{h.index + 1}"
                self._ip("link", "add", "eth0", "netns", h.netns, "type", "veth", "peer", "name", port,
                         "netns", self.bridge)
                self._ip("-n", self.bridge, "link", "set", port, "master", "br0")
                self._ip("-n", self.bridge, "link", "set", port, "up")
                self._ip("-n", h.netns, "addr", "add", f"{h.ip}/24", "dev", "eth0")
                if h.ip6:
                    self._ip("-n", h.netns, "addr", "add", f"{h.ip6}/64", "dev", "eth0", "nodad")
                self._ip("-n", h.netns, "link", "set", "eth0", "up")
        except BaseException:
            self.destroy()
            raise
        return self

    def run(self, index: int, *cmd: str) -> subprocess.CompletedProcess:
        """Run a command inside host `index` (e.g. `ip addr add ...`)."""
        return subprocess.run(["nsenter", f"--net={self.hosts[index].path}", "--", *cmd],
                              capture_output=True, text=True, timeout=30, check=True)

    def daemon(self, index: int, config: dict[str, Any] | None = None, listen: str | None = None,
               env: dict[str, str] | None = None) -> NetnsDaemon:
        """A daemon in host `index`, listening on its address (or on `listen`); not started."""
        h = self.hosts[index]
        node = NetnsDaemon(h, self.base, f"n{index + 1}", h.ip, config=config, env=env)
        if listen:
            node.config["listen"] = listen
        self.daemons.append(node)
        return node

    def destroy(self) -> None:
        for node in self.daemons:
            node.stop()
        for name in reversed(self.created):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        self.created.clear()


@pytest.fixture
def netns_lan(tmp_path: Path) -> Iterator[Callable[..., NetnsLan]]:
    """`netns_lan(n, ipv6=False)` -> a created NetnsLan; skips when namespaces cannot be made."""
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    lans: list[NetnsLan] = []

    def make(n: int, ipv6: bool = False) -> NetnsLan:
        lan = NetnsLan(tmp_path / f"lan{len(lans) + 1}", n, ipv6).create()
        lans.append(lan)
        return lan

    yield make
    for lan in lans:
        lan.destroy()
