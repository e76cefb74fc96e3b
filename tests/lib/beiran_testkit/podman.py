"""podman as registries.conf clients use it: rootful, its own storage in a temp dir (vfs), and a
containers-registries.conf(5) given by CONTAINERS_REGISTRIES_CONF."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path


class Podman:
    def __init__(self, base: Path) -> None:
        if shutil.which("podman") is None:
            raise RuntimeError("podman is not installed (apt-get install podman)")
        self.base = base
        for d in ("root", "tmp"):
            (base / d).mkdir(parents=True, exist_ok=True)
        self.runroot = tempfile.mkdtemp(prefix="pdr-", dir="/tmp")  # podman wants it under 50 characters
        self.conf = base / "registries.conf"

    def mirrors(self, pairs: list[tuple[str, str]]) -> Path:
        """[(registry, mirror location)], each mirror tried first, e.g. ("127.0.0.1:5000",
        "127.0.0.2:8888/one")."""
        text = "".join(f'[[registry]]\nlocation = "{reg}"\ninsecure = true\n\n'
                       f'[[registry.mirror]]\nlocation = "{mirror}"\ninsecure = true\n\n' for reg, mirror in pairs)
        self.conf.write_text(text)
        return self.conf

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        env = {**os.environ, "CONTAINERS_REGISTRIES_CONF": str(self.conf), "TMPDIR": str(self.base / "tmp")}
        cmd = ["podman", "--root", str(self.base / "root"), "--runroot", self.runroot,
               "--tmpdir", str(self.base / "tmp"), "--storage-driver", "vfs", "--events-backend", "file",
               "--cgroup-manager", "cgroupfs", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)

    def pull(self, ref: str) -> subprocess.CompletedProcess:
        return self.run("pull", "--tls-verify=false", ref)

    def cleanup(self) -> None:
        shutil.rmtree(self.runroot, ignore_errors=True)
