"""The `[plugins.apt]` section, validated once at init."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from typing import Any

from beiran.config import parse_hostport, parse_size
from beiran.config_check import refuse_unknown
from beiran.errors import ConfigError

DEFAULT_LISTEN = "127.0.0.1:3142"
DEFAULT_APT_DIR = "/etc/apt"
#: where packages put keyrings for `signed-by` (apt_dir's keyrings/ is the admin's place)
DEFAULT_SHARED_KEYRINGS = "/usr/share/keyrings"
KEY_SUFFIXES = (".gpg", ".asc", ".pgp")


@dataclass
class AptConfig:
    enabled: bool = True
    listen: str = DEFAULT_LISTEN
    keyrings: list[str] = field(default_factory=list)  # replaces every default keyring when set
    apt_dir: str = DEFAULT_APT_DIR  # trusted.gpg(.d), keyrings/, sources.list(.d) as apt reads them
    keyring_dirs: list[str] = field(default_factory=list)  # default: <apt_dir>/keyrings, /usr/share/keyrings
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

    def keyring_places(self) -> list[str]:
        """Where the keys for sources without `signed-by` are looked for (for messages, too)."""
        if self.keyrings:
            return list(self.keyrings)
        dirs = self.keyring_dirs or [os.path.join(self.apt_dir, "keyrings"), DEFAULT_SHARED_KEYRINGS]
        return [os.path.join(self.apt_dir, "trusted.gpg"), os.path.join(self.apt_dir, "trusted.gpg.d") + "/",
                *(d.rstrip("/") + "/" for d in dirs)]

    def apt_default_keyrings(self) -> list[str]:
        """What apt itself uses for a source without `signed-by`: trusted.gpg and trusted.gpg.d/."""
        if self.keyrings:
            return list(self.keyrings)
        return keyring_files(self.keyring_places()[:2])

    def keyring_files(self) -> list[str]:
        """Every key this machine's apt could be told to trust: apt's defaults plus the keyring
        directories `signed-by` points into (for archives whose sources.list this node cannot see,
        e.g. another machine's apt using this proxy). Never the `*-removed-*` keyrings."""
        return keyring_files(self.keyring_places())


def keyring_files(places: list[str]) -> list[str]:
    """Files of `places` (a file, or a directory ending in `/`) that exist, in a stable order."""
    found: list[str] = []
    for place in places:
        if place.endswith("/"):
            found += sorted(p for p in glob.glob(place + "*") if p.endswith(KEY_SUFFIXES)
                            and "removed" not in os.path.basename(p) and os.path.isfile(p))
        elif os.path.isfile(place):
            found.append(place)
    return found


def parse_config(section: dict[str, Any]) -> AptConfig:
    refuse_unknown("apt", section, set(AptConfig.__dataclass_fields__))
    cfg = AptConfig(**section)
    parse_hostport(cfg.listen, 3142)
    for name in ("keyrings", "keyring_dirs", "trusted_sources", "allow_hosts"):
        value = getattr(cfg, name)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"[plugins.apt] {name} must be a list of strings")
        setattr(cfg, name, value)
    if not isinstance(cfg.apt_dir, str) or not cfg.apt_dir.startswith("/"):
        raise ConfigError("[plugins.apt] apt_dir must be an absolute path (apt's /etc/apt)")
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
