"""Who may call a route: declared on the handler (`access`, `method_access`), checked once, in
`BaseHandler.prepare`; and which blobs a caller may have (the store's access policies), checked
once, in the serving primitive. The unix socket is the node's administrator and passes every check.
"""

from __future__ import annotations

import enum
import ipaddress
import socket
from functools import lru_cache
from typing import TYPE_CHECKING

from beiran.errors import Forbidden

if TYPE_CHECKING:
    from tornado.httputil import HTTPServerRequest

    from beiran.config import Config
    from beiran.handlers import BaseHandler


class Access(enum.Flag):
    ADMIN = 0  # the unix socket only
    LOOPBACK = enum.auto()  # this machine over TCP
    CLIENT = enum.auto()  # package clients: an address in client_cidrs, a Host naming this node
    PEER = enum.auto()  # peers: the cluster token's proof when one is set
    PUBLIC = enum.auto()  # anyone (read-only status)


def admit(handler: BaseHandler, allowed: Access) -> Access:
    """How the request is let in (ADMIN: the unix socket), or Forbidden / Unauthorized."""
    if handler.is_unix_socket():
        return Access.ADMIN
    if Access.PUBLIC in allowed:
        return Access.PUBLIC
    request, config = handler.request, handler.ctx.config
    remote = _ip(request.remote_ip)
    client = remote is not None and any(remote in net for net in config.client_networks())
    if Access.CLIENT in allowed and client and _host_ok(config, request):
        return Access.CLIENT
    if Access.PEER in allowed:
        if not handler.ctx.peers.policy.allows_ip(request.remote_ip or ""):
            raise Forbidden(f"{request.remote_ip} is not in peer_cidrs")
        handler.ctx.auth.check_request(request)
        return Access.PEER
    if Access.LOOPBACK in allowed and remote is not None and remote.is_loopback:
        return Access.LOOPBACK
    if Access.CLIENT in allowed:
        check_client(config, request)
    raise Forbidden("admin operations are accepted only on the local unix socket")


def check_client(config: Config, request: HTTPServerRequest) -> None:
    """A package client: its address in `client_cidrs`, and a `Host` that names this node, so a web
    page on the machine cannot reach the listener through DNS rebinding."""
    remote = _ip(request.remote_ip)
    if remote is None or not any(remote in net for net in config.client_networks()):
        raise Forbidden(f"client {request.remote_ip} is not in client_cidrs")
    if not _host_ok(config, request):
        raise Forbidden(f"Host {request.host[:100]!r} does not name this node; add it to client_hosts "
                        "if clients use that name")


def _host_ok(config: Config, request: HTTPServerRequest) -> bool:
    """A proxy request in absolute form (as apt sends) names its origin, not this node: browsers
    send those only to a proxy they were configured with, never to a rebound name."""
    return not (request.uri or "/").startswith("/") or host_allowed(config, request.host)


def host_allowed(config: Config, host: str | None) -> bool:
    """IP literals, localhost, this machine's hostname and `client_hosts`. No Host at all (HTTP/1.0)
    passes: browsers always send one."""
    if not host:
        return True
    if host.startswith("["):
        name, bracket, _ = host[1:].partition("]")
        if not bracket:
            return False
    else:
        name = host if host.count(":") > 1 else host.rpartition(":")[0] or host
    if _ip(name) is not None:
        return True
    name = name.rstrip(".").lower()
    return (name == "localhost" or name.endswith(".localhost") or name in _own_names()
            or name in (n.rstrip(".").lower() for n in config.client_hosts))


@lru_cache(maxsize=1)
def _own_names() -> frozenset[str]:
    name = socket.gethostname().lower()
    return frozenset({name, name.split(".")[0]})


@lru_cache(maxsize=1024)
def _ip(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """Parsed once per address, not on every request (a few per request showed in profiles)."""
    try:
        return ipaddress.ip_address((text or "").split("%")[0])
    except ValueError:
        return None


def check_blob_access(handler: BaseHandler, *digests: str) -> None:
    """The store's access policies (e.g. the k8s plugin's private images) for blobs leaving over
    TCP: a package client on this machine (its own runtime) may have them; anyone else only as the
    policies decide for the node its cluster-token proof names."""
    store = handler.ctx.store
    admitted = handler.admitted  # None: not through prepare(), so nobody is known
    if admitted == Access.ADMIN or not store.access_policies:
        return
    remote = _ip(handler.request.remote_ip)
    if admitted in (Access.CLIENT, Access.LOOPBACK) and remote is not None and remote.is_loopback:
        return
    peer = handler.ctx.auth.uuid_of(handler.request) if admitted == Access.PEER else None
    for digest in digests:
        store.check_access(digest, peer)
