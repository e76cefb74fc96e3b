"""The `[plugins.apt]` section, validated once at init."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from typing import Any

from beiran.config import parse_hostport, parse_size
from beiran.errors import ConfigError

DEFAULT_LISTEN = "127.0.0.1:3142"
#: what apt itself trusts, plus the keyrings packages install for `signed-by` (never the removed ones)
DEFAULT_KEYRING_GLOBS = ["/etc/apt/trusted.gpg", "/etc/apt/trusted.gpg.d/*.gpg", "/etc/apt/trusted.gpg.d/*.asc",
                         "/usr/share/keyrings/*.gpg"]


@dataclass
class AptConfig:
    enabled: bool = True
    listen: str = DEFAULT_LISTEN
    keyrings: list[str] = field(default_factory=list)
    trusted_sources: list[str] = field(default_factory=list)
    ca_file: str = ""
    allow_hosts: list[str] = field(default_factory=list)  # fnmatch patterns; empty: any host
    max_index_size: int = 1 << 30
    upstream_timeout: float = 20.0
    peer_index_fallback: bool = True
    advertise: bool = True

    @property
    def host(self) -> str:
        return parse_hostport(self.listen, 3142)[0]

    @property
    def port(self) -> int:
        return parse_hostport(self.listen, 3142)[1]

    def keyring_files(self) -> list[str]:
        if self.keyrings:
            return list(self.keyrings)
        found: list[str] = []
        for pattern in DEFAULT_KEYRING_GLOBS:
            found += sorted(p for p in glob.glob(pattern) if "removed" not in os.path.basename(p))
        return found


def parse_config(section: dict[str, Any]) -> AptConfig:
    known = set(AptConfig.__dataclass_fields__)
    unknown = sorted(set(section) - known)
    if unknown:
        raise ConfigError(f"[plugins.apt]: unknown setting(s) {', '.join(unknown)} "
                          f"(known: {', '.join(sorted(known))})")
    cfg = AptConfig(**section)
    parse_hostport(cfg.listen, 3142)
    for name in ("keyrings", "trusted_sources", "allow_hosts"):
        value = getattr(cfg, name)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"[plugins.apt] {name} must be a list of strings")
        setattr(cfg, name, value)
    for path in cfg.keyrings:
        if not os.path.isfile(path):
            raise ConfigError(f"[plugins.apt] keyring {path} does not exist")
    if cfg.ca_file and not os.path.isfile(cfg.ca_file):
        raise ConfigError(f"[plugins.apt] ca_file {cfg.ca_file} does not exist")
    for prefix in cfg.trusted_sources:
        if not prefix.startswith(("http://", "https://")):
            raise ConfigError(f"[plugins.apt] trusted_sources entry {prefix!r} must be an http(s):// URL prefix")
    cfg.max_index_size = parse_size(cfg.max_index_size, "[plugins.apt] max_index_size") or (1 << 30)
    try:
        cfg.upstream_timeout = float(cfg.upstream_timeout)
    except (TypeError, ValueError):
        raise ConfigError("[plugins.apt] upstream_timeout must be a number of seconds") from None
    return cfg
