"""Which addresses this node treats as peers (`peer_cidrs`), and where it fetches from a peer.

A peer's own claims about its address (the hello's `url`, `addresses`) are never dialed: a node
fetches from a peer only at the URL it dialed itself, or at the inbound connection's remote address
with the port the peer gave. Discovery results must fall in `peer_cidrs` before they are dialed;
addresses the operator names (`peers`, `beiran node probe`) are dialed as named.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from functools import lru_cache
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from beiran.config import Config

#: discovery sources whose addresses the operator named (exempt from `peer_cidrs`)
OPERATOR_NAMED = frozenset({"static", "probe"})

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@lru_cache(maxsize=1024)
def _ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """Parsed once per address, not on every peer request."""
    try:
        addr = ipaddress.ip_address(value.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        return addr.ipv4_mapped
    return addr


class PeerPolicy:
    def __init__(self, config: Config) -> None:
        self.networks: list[Network] = config.peer_networks()

    def allows_ip(self, value: str) -> bool:
        addr = _ip(value)
        return addr is not None and any(addr in net for net in self.networks)

    async def allows_url(self, url: str) -> bool:
        """Every address the URL's host stands for must be a peer address."""
        host = urlsplit(url).hostname or ""
        if _ip(host) is not None:
            return self.allows_ip(host)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except OSError:
            return False
        addrs = {str(info[4][0]) for info in infos}
        return bool(addrs) and all(self.allows_ip(a) for a in addrs)


def fetch_url(remote_ip: str, port: object) -> str | None:
    """The inbound peer's address as seen on the socket, with the port it says it listens on."""
    addr = _ip(remote_ip)
    if addr is None or not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        return None
    host = f"[{addr}]" if addr.version == 6 else str(addr)
    return f"http://{host}:{port}"
