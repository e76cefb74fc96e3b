"""`[plugins.dns]`: names to look up, nameservers, refresh interval; checked once at init."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from beiran.config_check import refuse_unknown
from beiran.errors import ConfigError

DEFAULT_PORT = 8888


@dataclass(frozen=True)
class Name:
    """One configured name: a SRV name (`_beiran._tcp.<domain>`) or a host name (A/AAAA + port)."""

    name: str
    srv: bool
    port: int | None = None  # host names: the peers' port

    @property
    def label(self) -> str:
        return self.name if self.srv or self.port is None else f"{self.name}:{self.port}"


@dataclass
class Settings:
    names: list[Name] = field(default_factory=list)
    nameservers: list[tuple[str, int]] = field(default_factory=list)  # [] = the system's resolv.conf
    port: int = DEFAULT_PORT  # for host names given without a port
    interval: float = 10.0  # seconds between lookups; shorter when the records' TTL is shorter
    min_interval: float = 1.0  # never look up more often than this, whatever the TTL
    timeout: float = 3.0  # seconds for one lookup (all its retries)
    probe_timeout: float = 3.0  # seconds for GET /info on a found target

    @classmethod
    def parse(cls, section: dict[str, Any]) -> Settings:
        data = {k: v for k, v in section.items() if k != "enabled"}
        refuse_unknown("dns", data, {"names", "nameservers", "port", "interval", "min_interval", "timeout",
                                     "probe_timeout"})
        s = cls()
        for key in ("interval", "min_interval", "timeout", "probe_timeout"):
            if key in data:
                value = data[key]
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                    raise ConfigError(f"[plugins.dns] {key}: expected a positive number of seconds, got {_show(value)}")
                setattr(s, key, float(value))
        if "port" in data:
            s.port = _port(data["port"], "[plugins.dns] port")
        s.names = [parse_name(n, s.port) for n in _list(data.get("names", []), "names")]
        s.nameservers = [parse_nameserver(n) for n in _list(data.get("nameservers", []), "nameservers")]
        return s


def _show(value: Any) -> str:
    return repr(value)[:100]


def _list(value: Any, key: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ConfigError(f"[plugins.dns] {key}: expected a list of strings")
    return [v.strip() for v in value]


def _port(value: Any, what: str) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError):
        port = 0
    if isinstance(value, bool) or not 0 < port < 65536:
        raise ConfigError(f"{what}: {_show(value)} is not a port number")
    return port


def parse_name(value: str, default_port: int) -> Name:
    """'_beiran._tcp.example.com' (SRV), 'peers.example.com' or 'peers.example.com:9000' (A/AAAA)."""
    host, port = value, None
    if value.count(":") == 1:
        host, raw = value.split(":")
        port = _port(raw, f"[plugins.dns] names: {_show(value)}")
    labels = host.rstrip(".").split(".")
    if not host or len(host) > 253 or any(not 0 < len(label) < 64 for label in labels):
        raise ConfigError(f"[plugins.dns] names: {_show(value)} is not a DNS name")
    if any(c.isspace() or c in "/\\@:[]" for c in host):
        raise ConfigError(f"[plugins.dns] names: {_show(value)} is not a DNS name")
    srv = labels[0].startswith("_") and len(labels) > 2 and labels[1] in ("_tcp", "_udp")
    if srv and port is not None:
        raise ConfigError(f"[plugins.dns] names: {_show(value)}: a SRV name carries its own ports")
    return Name(host, srv, None if srv else (port or default_port))


def parse_nameserver(value: str) -> tuple[str, int]:
    """'10.96.0.10', '127.0.0.1:5353', '[fd00::53]:5353', 'fd00::53' -> (ip, port)."""
    host, port = value, 53
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        if rest:
            port = _port(rest.lstrip(":"), f"[plugins.dns] nameservers: {_show(value)}")
    elif value.count(":") == 1:
        host, raw = value.split(":")
        port = _port(raw, f"[plugins.dns] nameservers: {_show(value)}")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"[plugins.dns] nameservers: {_show(value)} is not IP[:PORT]") from None
    return str(ip), port
