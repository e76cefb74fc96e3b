"""pytest fixtures: `cluster` (real daemons) and `origin` (counting HTTP origin)."""

from __future__ import annotations

import hashlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from beiran_testkit.daemon import Daemon, next_subnet, wait_until
from beiran_testkit.dnsserver import Dnsmasq, dnsmasq_missing
from beiran_testkit.origin import Origin
from beiran_testkit.tinyproxy import Tinyproxy, tinyproxy_missing

__all__ = ["Cluster", "cluster", "dnsmasq", "origin", "random_blob", "tinyproxy"]


def random_blob(size: int, seed: int = 0) -> tuple[bytes, str]:
    data = (hashlib.sha256(str(seed).encode()).digest() * (size // 32 + 1))[:size]
    data = bytearray(data)
    # make it non-periodic so a misplaced range cannot pass verification
    for i in range(0, size, 4096):
        data[i:i + 8] = i.to_bytes(8, "big")
    data = bytes(data[:size])
    return data, "sha256:" + hashlib.sha256(data).hexdigest()


class Cluster:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.subnet = next_subnet()
        self.nodes: list[Daemon] = []

    def ip(self, i: int) -> str:
        return f"127.{self.subnet // 1000}.{self.subnet % 1000}.{i + 2}"

    def add(self, config: dict[str, Any] | None = None, peers: str | list[str] | None = "all",
            start: bool = True, env: dict[str, str] | None = None) -> Daemon:
        i = len(self.nodes)
        cfg = dict(config or {})
        if peers == "all":
            cfg.setdefault("peers", [n.url for n in self.nodes])
        elif isinstance(peers, list):
            cfg.setdefault("peers", peers)
        node = Daemon(self.base, f"n{i + 1}", self.ip(i), config=cfg, env=env)
        self.nodes.append(node)
        if start:
            node.start()
        return node

    def start(self, n: int, config: dict[str, Any] | None = None, wait: bool = True) -> list[Daemon]:
        """n daemons, each with every earlier one as a static peer; waits until all are connected."""
        new = [self.add(config, start=False) for _ in range(n)]
        for node in new:
            node.start(wait=False)
        for node in new:
            node.wait_ready()
        if wait:
            self.wait_connected()
        return new

    def wait_connected(self, nodes: list[Daemon] | None = None, timeout: float = 20) -> None:
        nodes = nodes or [n for n in self.nodes if n.alive]
        for node in nodes:
            others = {o.uuid for o in nodes if o is not node}
            wait_until(lambda node=node, others=others: others <= node.online_peers(), timeout,
                       what=f"{node.name} to see {len(others)} peers online")

    def stop(self) -> None:
        """Every node told at once, then each waited for: their shutdowns overlap."""
        for node in self.nodes:
            if node.alive:
                node.proc.send_signal(signal.SIGTERM)
        for node in self.nodes:
            node.wait_stopped()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path / "cluster")
    yield c
    c.stop()
    if os.environ.get("BEIRAN_TEST_KEEP_LOGS"):
        return


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[Origin]:
    o = Origin(tmp_path / "origin").start()
    yield o
    o.stop()


@pytest.fixture
def dnsmasq(tmp_path: Path) -> Iterator[Dnsmasq]:
    """Not started: the test calls `set_records(...)` (which starts it) once it knows its nodes."""
    reason = dnsmasq_missing()
    if reason:
        pytest.skip(reason)
    server = Dnsmasq(tmp_path / "dnsmasq")
    yield server
    server.stop()


@pytest.fixture
def tinyproxy(tmp_path: Path) -> Iterator[Tinyproxy]:
    """Debian's tinyproxy as the site's forward proxy, started (its log tells what went through it)."""
    reason = tinyproxy_missing()
    if reason:
        pytest.fail(reason)
    proxy = Tinyproxy(tmp_path / "tinyproxy").start()
    yield proxy
    proxy.stop()
