"""Which of this node's addresses a client-serving listener may be announced on.

An announcement (mDNS, and whatever discovery comes next) tells other hosts "use this service at
this address". Announcing an address the listener does not listen on, or one whose clients
`client_cidrs` refuses, hands every host that trusts the announcement a dead proxy. So a listener is
announced only on addresses it is bound to (or covers with a wildcard) that are not loopback and
that lie inside a client network; one bound to loopback only, or whose client networks are all
loopback, is not announced at all.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
#: True for an address (as text, an IPv6 scope allowed) that may be announced
AddressFilter = Callable[[str], bool]
WILDCARD_V4, WILDCARD_V6 = ipaddress.ip_address("0.0.0.0"), ipaddress.ip_address("::")


def _ip(value: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(value.split("%", 1)[0].strip("[]"))
    except ValueError:
        return None


def _resolve(host: str) -> list[IPAddress]:
    """The addresses a listener bound to `host` listens on (a name: every address it resolves to,
    as `bind_sockets` binds them all). Blocking for names: call it in an executor."""
    ip = _ip(host)
    if ip is not None:
        return [ip]
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return []
    return [ip for info in infos if (ip := _ip(str(info[4][0]))) is not None]


def _all_loopback(net: IPNetwork) -> bool:
    return net.network_address.is_loopback and net.broadcast_address.is_loopback


@dataclass(frozen=True)
class ClientAddresses:
    """The filter: an address is announced when the listener covers it and clients there are admitted."""

    bound: frozenset[IPAddress]
    networks: tuple[IPNetwork, ...]

    def __call__(self, addr: str) -> bool:
        ip = _ip(addr)
        if ip is None or ip.is_loopback or ip.is_unspecified:
            return False
        wildcard = WILDCARD_V4 if ip.version == 4 else WILDCARD_V6
        if ip not in self.bound and wildcard not in self.bound:
            return False
        return any(ip in net for net in self.networks if net.version == ip.version)


def client_addresses(bound_hosts: Iterable[str],
                     client_networks: Iterable[IPNetwork]) -> ClientAddresses | str:
    """The filter for a listener bound to `bound_hosts` ("0.0.0.0" / "::" for every IPv4 / IPv6
    address) serving `client_networks`; or, when no address can pass, the reason (for the log).
    Resolves host names: blocking."""
    bound = frozenset(ip for host in bound_hosts for ip in _resolve(host))
    if not bound:
        return f"its listen address {', '.join(bound_hosts)} does not resolve"
    if all(ip.is_loopback for ip in bound):
        return (f"it listens on {', '.join(sorted(map(str, bound)))} (loopback), which other hosts "
                "cannot reach")
    networks = tuple(net for net in client_networks if not _all_loopback(net))
    if not networks:
        return "client_cidrs admit only loopback clients, so other hosts would be refused"
    return ClientAddresses(bound, networks)
