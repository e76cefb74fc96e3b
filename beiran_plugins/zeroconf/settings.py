"""`[plugins.zeroconf]`: checked once at init so a typo is an error, not a silent default."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from beiran.config_check import refuse_unknown
from beiran.errors import ConfigError

SERVICE_TYPE = "_beiran._tcp.local."
_TYPE_RE = re.compile(r"^_[a-z0-9][a-z0-9_-]{0,14}\._(?:tcp|udp)\.local\.$")


@dataclass
class Settings:
    interfaces: list[str] = field(default_factory=list)  # addresses or interface names; [] = default
    cluster: str = "default"  # nodes only join services announcing the same cluster name
    probe_timeout: float = 3.0  # seconds for GET /info on an announced node
    resolve_timeout: float = 3.0  # seconds to resolve an announced service's SRV/TXT/addresses
    address_check_interval: float = 10.0  # seconds between checks for changed local addresses

    @classmethod
    def parse(cls, section: dict[str, Any]) -> Settings:
        data = {k: v for k, v in section.items() if k != "enabled"}
        refuse_unknown("zeroconf", data, set(cls.__dataclass_fields__))
        s = cls(**data)
        if not isinstance(s.interfaces, list) or not all(isinstance(i, str) and i for i in s.interfaces):
            raise ConfigError("[plugins.zeroconf] interfaces: expected a list of addresses or interface names")
        if not isinstance(s.cluster, str) or not s.cluster or len(s.cluster) > 64:
            raise ConfigError("[plugins.zeroconf] cluster: expected a name of 1-64 characters")
        for name in ("probe_timeout", "resolve_timeout", "address_check_interval"):
            value = getattr(s, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(f"[plugins.zeroconf] {name}: expected a positive number of seconds")
            setattr(s, name, float(value))
        return s


def checked_service_type(value: str) -> str:
    """'_apt_proxy._tcp' or '_apt_proxy._tcp.local.' -> '_apt_proxy._tcp.local.' (checked).

    Underscores are accepted in the name (RFC 6335 forbids them, but apt's `_apt_proxy._tcp` uses one).
    """
    value = value.strip().lower()
    if not value.endswith("."):
        value += "."
    if not value.endswith(".local."):
        value += "local."
    if not _TYPE_RE.match(value):
        raise ValueError(f"service type {value!r}: expected _name._tcp or _name._udp, name of 1-15 characters")
    return value
