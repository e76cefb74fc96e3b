"""Which interfaces mDNS runs on and which addresses the node announces.

Default: the address the daemon listens on; when it listens on every address (0.0.0.0 / ::), every
interface that has an address, IPv4 and IPv6. Configured entries are IP addresses or interface
names (their addresses are read again on every check, so a changed address is noticed).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field

import ifaddr
from zeroconf import IPVersion

from beiran.errors import ConfigError

WILDCARDS = ("0.0.0.0", "::", "")


@dataclass(frozen=True)
class Selection:
    """What to hand python-zeroconf (`interfaces`, `ip_version`) and what to announce."""

    interfaces: tuple[str | int, ...]  # IPv4 address strings and IPv6 interface indexes
    announce: tuple[str, ...]  # addresses peers should use to reach this node
    ip_version: IPVersion = IPVersion.V4Only
    problems: tuple[str, ...] = field(default=())

    def describe(self) -> dict[str, object]:
        return {"interfaces": [str(i) for i in self.interfaces], "announce": list(self.announce),
                "ip_version": self.ip_version.name, "problems": list(self.problems)}


def _ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(value.split("%", 1)[0])
    except ValueError:
        return None


def _is_v4(addr: str) -> bool:
    ip = _ip(addr)
    return ip is not None and ip.version == 4


def _is_loopback(addr: str) -> bool:
    ip = _ip(addr)
    return ip is not None and ip.is_loopback


def _adapter_ips(adapter: ifaddr.Adapter) -> list[tuple[str, int | None]]:
    """(address, interface index) of one adapter."""
    return [(ip.ip[0] if isinstance(ip.ip, tuple) else ip.ip, adapter.index) for ip in adapter.ips]


def _usable_for_peers(addr: str) -> bool:
    ip = _ip(addr)
    return ip is not None and not ip.is_loopback and not ip.is_link_local and not ip.is_unspecified


def _resolve_host(host: str) -> str:
    if _ip(host) is not None:
        return host
    try:
        return str(socket.getaddrinfo(host, None)[0][4][0])
    except (OSError, IndexError):
        raise ConfigError(f"zeroconf: cannot resolve the listen host {host!r}") from None


def select(configured: list[str], listen_host: str) -> Selection:
    """Compute the interfaces and announced addresses for the config and listen address."""
    adapters = ifaddr.get_adapters()
    wildcard = listen_host in WILDCARDS
    problems: list[str] = []
    picked: list[tuple[str, int | None]] = []  # (address, interface index)
    if configured:
        by_name = {a.name: a for a in adapters} | {a.nice_name: a for a in adapters}
        for entry in configured:
            if _ip(entry) is not None:
                picked.append((entry, _index_of(adapters, entry)))
            elif entry in by_name:
                ips = _adapter_ips(by_name[entry])
                if not ips:
                    problems.append(f"interface {entry} has no address")
                picked += ips
            else:
                problems.append(f"no interface or address {entry!r}")
    elif wildcard:
        everything = [ip for a in adapters for ip in _adapter_ips(a)]
        picked = [p for p in everything if not _is_loopback(p[0])]
        if not picked:  # a machine with loopback only still finds its own neighbours
            picked = [p for p in everything if _is_v4(p[0])]
    else:
        host = _resolve_host(listen_host)
        picked = [(host, _index_of(adapters, host))]
    interfaces: list[str | int] = []
    v4_joined: set[int] = set()  # multicast is joined once per interface, whatever its addresses
    for addr, index in picked:
        if _is_v4(addr):
            if index is not None and index in v4_joined:
                continue
            if index is not None:
                v4_joined.add(index)
            item: str | int = addr
        elif index is not None:
            item = index  # IPv6 multicast is joined per interface index
        else:
            problems.append(f"no interface holds {addr}")
            continue
        if item not in interfaces:
            interfaces.append(item)
    if wildcard:
        announce = [a for a, _ in picked if _usable_for_peers(a)] or [a for a, _ in picked]
    else:
        announce = [_resolve_host(listen_host)]
    announce = list(dict.fromkeys(a.split("%", 1)[0] for a in announce))
    v4, v6 = any(isinstance(i, str) for i in interfaces), any(isinstance(i, int) for i in interfaces)
    version = IPVersion.All if v4 and v6 else IPVersion.V6Only if v6 else IPVersion.V4Only
    return Selection(tuple(interfaces), tuple(announce), version, tuple(problems))


def _index_of(adapters: Iterable[ifaddr.Adapter], addr: str) -> int | None:
    """The index of the interface holding `addr` (None for e.g. 127.x addresses nobody holds)."""
    ip = _ip(addr)
    for adapter in adapters:
        for a, index in _adapter_ips(adapter):
            if _ip(a) == ip:
                return index
    return None


def packed(addresses: tuple[str, ...]) -> list[bytes]:
    return [ip.packed for a in addresses if (ip := _ip(a)) is not None]
