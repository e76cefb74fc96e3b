"""One environment for the k8s tests (module scope: starting it is most of the cost): three Beiran
nodes with a cluster token, each with its own containerd (CRI plugin, own root/state/socket, hosts.toml
written by `beiran k8s configure-containerd --write`), an open docker-registry behind a counting proxy
and a docker-registry with htpasswd auth. Each test pulls images of its own, so counts stay clean."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from beiran_testkit.cri import Containerd, CRIClient, PrivateRegistry
from beiran_testkit.daemon import Daemon
from beiran_testkit.fixtures import Cluster
from beiran_testkit.oci import Layout, hello_elf, random_bytes
from beiran_testkit.registry import Registry, free_port

for tool in ("containerd", "ctr", "docker-registry", "skopeo"):
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed (apt-get install containerd docker-registry skopeo)",
                    allow_module_level=True)

TOKEN = "k8s-test-cluster-token"
USERS = {"alice": "s3cret-alice", "bob": "bob-password"}


@dataclass
class Node:
    daemon: Daemon
    containerd: Containerd
    cri_socket: str

    def cri(self) -> CRIClient:
        return CRIClient(self.cri_socket)

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BEIRAN_")}
        env["BEIRAN_SOCKET"] = self.daemon.socket
        return subprocess.run([sys.executable, "-m", "beiran", *args], capture_output=True, text=True,
                              timeout=timeout, env=env)


@dataclass
class Env:
    base: Path
    registry: Registry
    private: PrivateRegistry
    dead_registry: str
    layout: Layout
    nodes: list[Node] = field(default_factory=list)
    token: str = TOKEN
    users: dict[str, str] = field(default_factory=lambda: dict(USERS))
    _n: int = 0

    def image(self, layers: int = 2, size: int = 200_000, tag: str | None = None, private: bool = False,
              platforms: tuple[str, ...] = ()) -> tuple[str, object]:
        """A fresh image (unique bytes) pushed to the open or the private registry; (reference, Image)."""
        self._n += 1
        n = self._n
        files = [{"hello": hello_elf(f"image {n}\n".encode())}]
        files += [{f"data/{n}-{i}": random_bytes(size, seed=n * 100 + i)} for i in range(1, layers)]
        im = self.layout.image([(f, "gzip") for f in files])
        repo = f"team/private{n}" if private else f"test/app{n}"
        name = tag or f"v{n}"
        top = im.manifest
        if platforms:
            others = [self.layout.image([(f, "gzip") for f in files], arch=p) for p in platforms]
            top = self.layout.index([im, *others])
        self.layout.tag(top, f"img{n}")
        if private:
            self.private.push(self.layout, f"img{n}", f"{repo}:{name}", "alice")
            return f"{self.private.name}/{repo}:{name}", im
        self.layout.push(f"img{n}", f"{self.registry.push_name}/{repo}:{name}", all_platforms=bool(platforms))
        return f"{self.registry.name}/{repo}:{name}", im


def _node_config(env: Env, containerd: Containerd, cri_socket: str) -> dict:
    registries = {env.registry.name: {"url": env.registry.url}, env.private.name: {"url": env.private.url},
                  env.dead_registry: {"url": f"http://{env.dead_registry}"}}
    return {"cluster_token": TOKEN,
            "plugins": {"docker": {"engine": False, "registries": registries},
                        "k8s": {"socket": cri_socket, "runtime_endpoint": containerd.endpoint,
                                "hosts_dir": str(containerd.certs), "runtime_timeout": 10}}}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    base = tmp_path_factory.mktemp("k8s")
    sockdir = Path(tempfile.mkdtemp(prefix="bcri-", dir="/tmp"))  # unix socket paths stay short
    registry = Registry(base / "registry")
    private = PrivateRegistry(base / "private", USERS)
    e = Env(base, registry, private, f"127.0.0.1:{free_port()}", Layout(base / "layout"))
    cluster = Cluster(base / "cluster")
    try:
        registry.start()
        private.start()
        for i in range(3):
            ctd = Containerd(base / f"containerd{i + 1}")
            e.nodes.append(Node(cluster.add(_node_config(e, ctd, str(sockdir / f"n{i + 1}.sock")), start=False),
                                ctd, str(sockdir / f"n{i + 1}.sock")))
            ctd.start()
        for node in e.nodes:
            node.daemon.start(wait=False)
        for node in e.nodes:
            node.daemon.wait_ready()
        cluster.wait_connected()
        for node in e.nodes:  # the real command an operator runs, pointing containerd at this node
            out = node.cli("k8s", "configure-containerd", "--write", "--containerd-config",
                           str(node.containerd.base / "containerd.toml"))
            assert out.returncode == 0, out.stderr
        yield e
    finally:
        cluster.stop()
        for node in e.nodes:
            node.containerd.cleanup()
        registry.stop()
        private.stop()
        shutil.rmtree(sockdir, ignore_errors=True)
