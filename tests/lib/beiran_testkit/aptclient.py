"""A real `apt-get` that never touches the machine's apt state: its own APT_CONFIG, lists, cache
and (empty) dpkg status under a temp dir, no host apt.conf.d hooks, no host keyrings."""

from __future__ import annotations

import hashlib
import http.client
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from beiran_testkit.aptrepo import AptRepo
from beiran_testkit.daemon import wait_until

APT_PORT = 3142
#: other plugins of the source tree stay off in the dev loop (under nox they are not installed)
OTHER_PLUGINS = ["docker", "npm", "dns", "zeroconf", "k8s"]


class AptClient:
    def __init__(self, root: Path, sources: list[str], proxy: str | None = None,
                 options: dict[str, str] | None = None, sources_parts: Path | None = None) -> None:
        """`sources_parts`: a sources.list.d of `.list`/`.sources` files apt reads too (the one a
        test's daemon reads as its `apt_dir`'s)."""
        self.root = root
        etc, self.state, self.cache, log = root / "etc", root / "state", root / "cache", root / "log"
        for d in (etc / "apt.conf.d", etc / "trusted.gpg.d", etc / "preferences.d", self.state / "lists/partial",
                  self.cache / "archives/partial", log):
            d.mkdir(parents=True, exist_ok=True)
        (self.state / "status").touch()
        (etc / "sources.list").write_text("\n".join(sources) + "\n")
        conf = {
            "Dir::Etc::main": "/dev/null",
            "Dir::Etc::parts": str(etc / "apt.conf.d"),
            "Dir::Etc::sourcelist": str(etc / "sources.list"),
            "Dir::Etc::sourceparts": str(sources_parts) if sources_parts else "-",
            "Dir::Etc::trusted": str(etc / "trusted.gpg"),
            "Dir::Etc::trustedparts": str(etc / "trusted.gpg.d"),
            "Dir::Etc::preferences": str(etc / "preferences"),
            "Dir::Etc::preferencesparts": str(etc / "preferences.d"),
            "Dir::State": str(self.state),
            "Dir::State::status": str(self.state / "status"),
            "Dir::Cache": str(self.cache),
            "Dir::Log": str(log),
            "APT::Sandbox::User": "root",
            "Acquire::Languages": "none",
            "Acquire::Retries": "3",
            "Acquire::Retries::Delay": "false",
            "Acquire::http::Timeout": "20",
            "Acquire::https::Timeout": "20",
            "Binary::apt-get::Acquire::AllowInsecureRepositories": "false",
        }
        if proxy:
            conf["Acquire::http::Proxy"] = proxy
        else:
            conf["Acquire::http::Proxy"] = "DIRECT"
        conf.update(options or {})
        self.config_file = etc / "apt.conf"
        self.config_file.write_text("".join(f'{k} "{v}";\n' for k, v in conf.items()))

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.lower().endswith("_proxy") and not k.startswith("BEIRAN_")}
        env.update({"APT_CONFIG": str(self.config_file), "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"})
        return env

    def run(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(["apt-get", "-q", "-y", *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise AssertionError(f"apt-get {' '.join(args)} failed ({proc.returncode}):\n"
                                 f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc

    def update(self, check: bool = True) -> subprocess.CompletedProcess:
        return self.run("update", check=check)

    def download(self, *packages: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess:
        """`apt-get install --download-only`: resolves dependencies, leaves the .debs in archives/."""
        return self.run("install", "--download-only", "--no-install-recommends", *packages, check=check,
                        timeout=timeout)

    @property
    def archives(self) -> Path:
        return self.cache / "archives"

    def debs(self) -> dict[str, str]:
        """File name -> sha256 of every .deb apt left in its archives dir."""
        return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(self.archives.glob("*.deb"))}

    def clean(self) -> None:
        for f in self.archives.glob("*.deb"):
            f.unlink()


# -- nodes with the proxy ------------------------------------------------------------------------
def apt_config(ip: str, repo: AptRepo | None = None, **extra: Any) -> dict[str, Any]:
    """A node config with the apt proxy on the node's own address, trusting the test archive key."""
    apt = {"listen": f"{ip}:{APT_PORT}", **extra}
    if repo is not None:
        apt.setdefault("keyrings", [str(repo.keyring)])
    plugins: dict[str, Any] = {name: {"enabled": False} for name in OTHER_PLUGINS}
    plugins["apt"] = apt
    return {"plugins": plugins}


def add_nodes(cluster: Any, n: int, repo: AptRepo | None = None, extra: list[dict] | None = None,
              apt_extra: list[dict] | None = None, env: dict[str, str] | None = None, **apt: Any) -> list[Any]:
    """n daemons with the apt proxy, all peered and connected. `apt` settings go to every node's
    [plugins.apt], `apt_extra[i]` to node i's only; `extra[i]` is merged into node i's config."""
    nodes = []
    for i in range(n):
        cfg = apt_config(cluster.ip(len(cluster.nodes)), repo, **apt, **(apt_extra or [{}] * n)[i])
        cfg.update((extra or [{}] * n)[i])
        nodes.append(cluster.add(cfg, start=False, env=env))
    for node in nodes:
        node.start(wait=False)
    for node in nodes:
        node.wait_ready()
    cluster.wait_connected(nodes)
    for node in nodes:  # the daemon answers before its plugins have started
        wait_until(lambda node=node: proxy_answers(node), 20, what=f"{node.name}'s apt proxy")
    return nodes


def proxy_answers(node: Any) -> bool:
    conn = http.client.HTTPConnection(node.ip, APT_PORT, timeout=5)
    try:
        conn.request("GET", "/_beiran/ping")
        return conn.getresponse().status == 200
    finally:
        conn.close()


def beiran(node: Any, *args: str, env: dict[str, str] | None = None, check: bool = True,
           timeout: float = 60) -> subprocess.CompletedProcess:
    """The real CLI against `node`'s socket."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BEIRAN_")}
    full_env.update(env or {})
    proc = subprocess.run([sys.executable, "-m", "beiran", "--socket", node.socket, *args], env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"beiran {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def proxy_of(node: Any) -> str:
    return f"http://{node.ip}:{APT_PORT}"


def client_for(tmp_path: Path, name: str, node: Any | None, repo: AptRepo, url: str, **kw: Any) -> AptClient:
    """An apt-get for the archive at `url`, through `node`'s proxy (proxy mode) or direct (None)."""
    return AptClient(tmp_path / f"apt-{name}", [repo.source_line(url)], proxy=proxy_of(node) if node else None,
                     **kw)
