"""This node's identity: a UUID made on first start and kept in the data dir."""

from __future__ import annotations

import os
import platform
import socket
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from beiran import __version__


def load_or_create_uuid(data_dir: Path) -> str:
    path = data_dir / "node-uuid"
    try:
        value = path.read_text().strip()
        return str(uuid.UUID(value))
    except (FileNotFoundError, ValueError):
        pass
    value = str(uuid.uuid4())
    tmp = path.with_suffix(".tmp")
    tmp.write_text(value + "\n")
    os.replace(tmp, path)
    return value


@dataclass
class NodeIdentity:
    uuid: str
    url: str  # how peers reach this node
    port: int
    addresses: list[str]
    hostname: str = field(default_factory=socket.gethostname)
    version: str = __version__
    os_type: str = field(default_factory=lambda: platform.system().lower())
    architecture: str = field(default_factory=platform.machine)
    plugins: list[str] = field(default_factory=list)
    started: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"uuid": self.uuid, "url": self.url, "port": self.port, "addresses": self.addresses,
                "hostname": self.hostname, "version": self.version, "os_type": self.os_type,
                "architecture": self.architecture, "plugins": self.plugins}


def advertised_addresses(listen_host: str) -> list[str]:
    """The addresses peers can use: the listen address, or every local one for 0.0.0.0."""
    if listen_host not in ("0.0.0.0", "::", ""):
        return [listen_host]
    addrs: list[str] = []
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None):
            addr = str(info[4][0])
            if addr not in addrs and not addr.startswith("127.") and addr != "::1":
                addrs.append(addr)
    except OSError:
        pass
    return addrs or ["127.0.0.1"]
