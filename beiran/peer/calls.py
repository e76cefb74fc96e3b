"""One way to call a peer's `rpc_*` and to list the peers that can be called, whatever the mode.

Why: in a full mesh every peer keeps a websocket and RPCs ride on it; above `[cluster] full_mesh_max`
(cluster.py) the websockets close, and anything written against them silently stopped working.
`PeerCalls.call` uses the websocket when one is connected, else a signed `POST /peer/rpc/<method>`
(rpc_http.py) to the member's address from membership (checked against peer_cidrs when it was
learned); the address is never taken from anything a peer says in the call. `reachable` lists the
nodes `call` can reach: online websocket peers, or alive members in swim mode, whose plugin lists
come from their signed `GET /info`, checked and bounded, cached for a while. A member whose /info
failed (down, not Beiran, another node at that address) is not asked again for INFO_FAIL_TTL, and
one member is asked by one request at a time, so callers that list peers often, at thousands of
members, do not re-dial the dead ones on every call.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from beiran.counts import InUse
from beiran.errors import BadRequest, BeiranError, TooManyRequests, UpstreamError, from_wire
from beiran.peer.membership import DEAD, GONE
from beiran.tasks import spawn

if TYPE_CHECKING:
    from beiran.context import DaemonContext

#: calls a peer may have running here at once over HTTP (the websocket's own cap is the same)
MAX_INBOUND = 32
#: and all peers together: without a token a peer's UUID is only a claim, so the per-peer cap alone
#: would not bound a caller that names a new UUID each time
MAX_INBOUND_TOTAL = 256
#: an RPC answer larger than this is refused (a websocket message has the same cap)
MAX_ANSWER = 4 << 20
METHOD = re.compile(r"[a-z][a-z_]{0,31}")
#: plugin lists learned from members' /info: how many members, for how long, how long a list
INFO_CACHE, INFO_TTL, MAX_PLUGINS, MAX_NAME = 4096, 300.0, 64, 64
INFO_PARALLEL, INFO_TIMEOUT, MAX_INFO = 16, 3.0, 64 << 10
#: seconds a member whose /info failed is not asked again (at most INFO_CACHE such members kept):
#: short, as a member that was starting or briefly unreachable should soon count again
INFO_FAIL_TTL = 15.0
OUT_PARALLEL = 16  # HTTP calls this node has open at once


class Caller(Protocol):
    """Who is calling an `rpc_*` handler: the websocket connection or a signed HTTP request."""

    @property
    def ctx(self) -> DaemonContext: ...

    @property
    def uuid(self) -> str | None: ...


@dataclass(frozen=True)
class HTTPCaller:
    ctx: DaemonContext
    uuid: str | None


Handler = Callable[..., Awaitable[Any]]


def handler(method: str) -> Handler | None:
    """The `rpc_<method>` a peer may call (protocol.py holds every one), or None. The one lookup,
    for the websocket and the HTTP path alike."""
    from beiran.peer import protocol

    if not METHOD.fullmatch(method):
        return None
    fn = getattr(protocol, f"rpc_{method}", None)
    return fn if callable(fn) else None


def plugin_names(value: Any) -> tuple[str, ...] | None:
    """A peer's claimed plugin list, bounded; None when it is not a list of short names."""
    if not isinstance(value, list) or len(value) > MAX_PLUGINS:
        return None
    if not all(isinstance(p, str) and len(p) <= MAX_NAME for p in value):
        return None
    return tuple(value)


class PeerCalls:
    def __init__(self, ctx: DaemonContext) -> None:
        self.ctx = ctx
        self.inbound: InUse[str] = InUse()  # peer -> its HTTP calls running here now
        #: node -> (ask after, its plugins, at url): what one address said holds for that address only
        self._plugins: OrderedDict[str, tuple[float, tuple[str, ...], str]] = OrderedDict()
        self._failed: OrderedDict[str, tuple[float, str]] = OrderedDict()  # node -> (ask after, at url)
        self._asking: dict[str, asyncio.Future[tuple[str, ...] | None]] = {}  # node -> its /info request
        self._info_slots = asyncio.Semaphore(INFO_PARALLEL)
        self._out_slots = asyncio.Semaphore(OUT_PARALLEL)

    # -- calling ----------------------------------------------------------------------------------
    async def call(self, node: str, method: str, timeout: float = 30.0, **params: Any) -> Any:
        """Call `rpc_<method>` on `node`: over its websocket when connected, else a signed request
        to its membership address. Errors come back typed as the peer sent them."""
        peers = self.ctx.peers
        conn = peers.conn(node)
        if conn is not None:
            try:
                return await conn.call(method, timeout=timeout, **params)
            except BeiranError as exc:
                if type(exc) is BeiranError:  # as the connection builds it from the wire
                    raise from_wire({"error": exc.code, "message": exc.message, "status": exc.status}) from None
                raise
        return await self._call_http(node, method, timeout, params)

    async def _call_http(self, node: str, method: str, timeout: float, params: dict[str, Any]) -> Any:
        from beiran.httpstream import stream_request

        if not METHOD.fullmatch(method):
            raise BadRequest(f"bad rpc name {method[:40]!r}")
        if node == self.ctx.identity.uuid:
            raise BadRequest("a node does not call itself over the network")
        base = self.ctx.peers.cluster.url_of(node)
        if not base:
            raise UpstreamError(f"node {node[:8]} is not connected")
        path = f"/peer/rpc/{method}"
        body = json.dumps({"from": self.ctx.identity.uuid, "params": params}).encode()
        headers = {"Content-Type": "application/json", **self.ctx.auth.headers("POST", path, body)}

        async def go() -> tuple[int, bytes]:
            async with stream_request(base + path, headers, method="POST", body=body, connect_timeout=5.0,
                                      max_redirects=0) as resp:
                return resp.code, await resp.read_all(MAX_ANSWER, idle_timeout=timeout)
        async with self._out_slots:  # outbound call connections at once: bounded like the link pool
            try:
                code, raw = await asyncio.wait_for(go(), timeout)
                answer = json.loads(raw or b"{}")
            except TimeoutError:
                raise UpstreamError(f"node {node[:8]}: {method} timed out") from None
            except BeiranError:
                raise
            except (OSError, ValueError) as exc:
                raise UpstreamError(f"node {node[:8]}: {method}: {exc}") from None
        if not isinstance(answer, dict):
            raise UpstreamError(f"node {node[:8]} answered {code} without a JSON object")
        if code != 200:
            raise from_wire({**answer, "status": code})
        return answer.get("r")

    def admit(self, peer: str) -> None:
        """Count one inbound HTTP call of `peer` (429 over the cap); `release` when it ends."""
        if self.inbound.get(peer, 0) >= MAX_INBOUND:
            raise TooManyRequests(f"more than {MAX_INBOUND} calls at once from one peer")
        if sum(self.inbound.values()) >= MAX_INBOUND_TOTAL:
            raise TooManyRequests(f"more than {MAX_INBOUND_TOTAL} peer calls at once")
        self.inbound.add(peer)

    def release(self, peer: str) -> None:
        self.inbound.done(peer)

    # -- who can be called -------------------------------------------------------------------------
    def reachable_nodes(self) -> list[str]:
        """Nodes `call` can reach now, this node not included: synced websocket peers in a full
        mesh; members not declared dead, at an address this node may use, in swim mode."""
        cluster = self.ctx.peers.cluster
        if not cluster.swim or cluster.membership is None:
            return self.ctx.peers.online()
        me = self.ctx.identity.uuid
        return [n for n in cluster.membership.live_ids() if n != me and cluster.url_of(n)]

    async def reachable(self, plugin: str | None = None) -> list[str]:
        """Nodes `call` can reach now (this node not included), with `plugin`: those that run it."""
        peers, cluster = self.ctx.peers, self.ctx.peers.cluster
        nodes = self.reachable_nodes()
        if plugin is None:
            return nodes
        if not cluster.swim or cluster.membership is None:
            return [n for n in nodes if (c := peers.conn(n)) is not None
                    and plugin in (plugin_names(c.info.get("plugins")) or ())]
        lists = await asyncio.gather(*(self.plugins_of(n) for n in nodes))
        return [n for n, names in zip(nodes, lists, strict=True) if names is not None and plugin in names]

    async def _get_info(self, url: str) -> Any:
        """A member's signed `GET /info` (at its membership address), read to at most MAX_INFO."""
        from beiran.httpstream import stream_request

        async def go() -> Any:
            async with stream_request(url + "/info", self.ctx.auth.headers("GET", "/info"),
                                      connect_timeout=INFO_TIMEOUT, max_redirects=0) as resp:
                if resp.code != 200:
                    return None
                return json.loads(await resp.read_all(MAX_INFO, idle_timeout=INFO_TIMEOUT))
        return await asyncio.wait_for(go(), INFO_TIMEOUT * 2)

    def status_of(self, node: str) -> str:
        """How a node shows to operators: its websocket's status; above full_mesh_max (no
        websockets) membership's word: online unless declared dead."""
        conn = self.ctx.peers.conn(node)
        if conn is not None:
            return conn.status.value
        cluster = self.ctx.peers.cluster
        state = cluster.state(node)
        return "online" if cluster.swim and state is not None and state not in (DEAD, GONE) else "offline"

    async def plugins_of(self, node: str) -> tuple[str, ...] | None:
        """The plugins `node` runs: its websocket hello, else its `/info` (cached); None if unknown."""
        conn = self.ctx.peers.conn(node)
        if conn is not None:
            return plugin_names(conn.info.get("plugins"))
        now = time.monotonic()
        url = self.ctx.peers.cluster.url_of(node)
        if not url:
            return None
        known = self._plugins.get(node)
        if known is not None and known[0] > now and known[2] == url:
            return known[1]
        failed = self._failed.get(node)
        if failed is not None and failed[0] > now and failed[1] == url:
            return None
        asking = self._asking.get(node)
        if asking is None:  # callers at once share one request (a kept task: see tasks.py)
            asking = self._asking[node] = spawn(self._learn(node, url), f"GET /info of {node[:8]}")
            asking.add_done_callback(lambda _: self._asking.pop(node, None))
        return await asyncio.shield(asking)

    async def _learn(self, node: str, url: str) -> tuple[str, ...] | None:
        names: tuple[str, ...] | None = None
        try:
            async with self._info_slots:
                info = await self._get_info(url)
        except (BeiranError, OSError, ValueError, TimeoutError):
            info = None
        if isinstance(info, dict) and info.get("uuid") == node:
            names = plugin_names(info.get("plugins"))
        now = time.monotonic()
        if names is None:  # down, another node at that address, or a claim out of bounds
            _remember(self._failed, node, (now + INFO_FAIL_TTL, url))
            return None
        self._failed.pop(node, None)
        _remember(self._plugins, node, (now + INFO_TTL, names, url))
        return names


def _remember(cache: OrderedDict[str, Any], key: str, value: Any) -> None:
    """Put `key` last in `cache`, which keeps the INFO_CACHE most recent keys."""
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > INFO_CACHE:
        cache.popitem(last=False)
