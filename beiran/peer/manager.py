"""Peer manager: known peer URLs (static, probe, discovery), dialers with backoff, one connection
per node pair, node records and statuses, and delta pushes of this node's holdings."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from beiran import events
from beiran.config import normalize_peer_url
from beiran.errors import BadRequest, UpstreamError
from beiran.models.base import dict_rows
from beiran.models.node import Node, NodeStatus
from beiran.peer import refusals
from beiran.peer.availability import Availability
from beiran.peer.calls import PeerCalls
from beiran.peer.cluster import ClusterService
from beiran.peer.connection import DUPLICATE, PROTOCOL_ERROR, PeerConnection
from beiran.peer.policy import OPERATOR_NAMED, PeerPolicy, fetch_url

if TYPE_CHECKING:
    from beiran.context import DaemonContext

log = logging.getLogger("beiran.peer")
PUSH_DELAY = 0.05
#: a connection closed as a duplicate leaves its node online this long for the other one to take over
DUPLICATE_GRACE = 5.0
#: close code of peer websockets when the cluster is above `[cluster] full_mesh_max` (see cluster.py)
SWIM_MODE = 4003


@dataclass
class PeerTarget:
    url: str
    found_by: set[str] = field(default_factory=set)
    uuid: str | None = None
    task: asyncio.Task[None] | None = None
    is_self: bool = False
    #: why the last dial failed ("" once connected): `beiran node probe` says it
    last_error: str = ""
    #: why the node there refused the last dial ("token", "peer_cidrs"; refusals.py), and when
    refused: str = ""
    refused_at: float = 0.0
    #: what its /info said when probed (uuid, hostname, version): `node list` shows a refusing node so
    claimed: dict[str, str] = field(default_factory=dict)


class PeerManager:
    def __init__(self, ctx: DaemonContext, avail: Availability) -> None:
        self.ctx = ctx
        self.avail = avail
        self.targets: dict[str, PeerTarget] = {}
        self.conns: dict[str, PeerConnection] = {}
        self.found_by: dict[str, set[str]] = {}  # node uuid -> how it was found
        self._pending_ops: list[list[Any]] = []
        self._pending_from = 0
        self._push_handle: asyncio.TimerHandle | None = None
        self._closing = False
        self.policy = PeerPolicy(ctx.config)
        self.addresses: dict[str, str] = {}  # node -> where its blobs are fetched (see policy.py)
        #: nodes between a duplicate's close and its twin's hello: (timer, the node was online)
        self._grace: dict[str, tuple[asyncio.TimerHandle, bool]] = {}
        self._forget: dict[str, asyncio.TimerHandle] = {}
        self._refused_logged: set[str] = set()
        self._tasks: set[asyncio.Future[Any]] = set()
        self.cluster = ClusterService(ctx)
        self.calls = PeerCalls(ctx)

    # -- targets ---------------------------------------------------------------------------------
    async def start(self) -> None:
        rows = await self.ctx.run_db(lambda: dict_rows(Node.select()))
        for r in rows:
            # discovery plugins start before this and may have found (and connected) nodes already:
            # what they recorded this run wins over the last run's record
            self.found_by.setdefault(r["uuid"], set(r["found_by"] or []))
        await self.ctx.run_db(lambda: Node.update(status=NodeStatus.OFFLINE.value)
                              .where(Node.uuid != self.ctx.identity.uuid).execute())
        for url in self.ctx.config.peers:
            self.discovered(url, via="static")
        await self.cluster.start()

    def discovered(self, url: str, via: str) -> None:
        """A discovery source saw a peer at `url`; connect if not yet connected."""
        url = normalize_peer_url(url)
        if url == self.ctx.identity.url:
            return
        target = self.targets.get(url)
        if target is None:
            target = self.targets[url] = PeerTarget(url)
        if target.is_self:
            return
        target.found_by.add(via)
        self.cluster.seed(url, named=via in OPERATOR_NAMED)
        if target.uuid:
            self._add_found_by(target.uuid, via)
        if target.task is None or target.task.done():
            target.task = asyncio.ensure_future(self._dial_loop(target))

    def vanished(self, url_or_uuid: str, via: str) -> None:
        """A discovery source lost a peer: drop it at once unless another source still sees it."""
        targets = [t for t in self.targets.values() if url_or_uuid in (t.url, t.uuid)]
        for t in targets:
            t.found_by.discard(via)
            if t.uuid and not any(via in x.found_by for x in self.targets.values() if x.uuid == t.uuid):
                self.found_by.get(t.uuid, set()).discard(via)  # `node list` shows current sources only
            if not t.found_by:
                if t.task:
                    t.task.cancel()
                del self.targets[t.url]
                conn = self.conns.get(t.uuid or "")
                if conn and not any(x.uuid == t.uuid for x in self.targets.values()):
                    conn.shutdown(f"{via} says the node is gone")

    def note_self(self, url: str | None) -> None:
        if url and url in self.targets:
            self.targets[url].is_self = True

    async def _dial_loop(self, target: PeerTarget) -> None:
        from beiran.peer.websocket import dial, dial_error

        delay = 0.25
        while not self._closing:
            if not self.cluster.full_mesh.is_set():  # above full_mesh_max: no per-pair websockets
                await self.cluster.full_mesh.wait()
                delay = 0.25
                continue
            if not target.found_by & OPERATOR_NAMED and not await self.policy.allows_url(target.url):
                if target.url not in self._refused_logged:
                    self._refused_logged.add(target.url)
                    log.warning("not dialing %s (found by %s): outside peer_cidrs", target.url,
                                ", ".join(sorted(target.found_by)))
                await asyncio.sleep(10.0)  # a name may resolve differently later
                continue
            if target.uuid and target.uuid in self.conns:  # connected the other way: stand by
                await asyncio.shield(self.conns[target.uuid].closed)
                continue
            try:
                conn = await dial(self, target.url)
                delay = 0.25
                refusals.note(target, "")
                await asyncio.shield(conn.closed)
                synced = conn.synced or conn.inherits
                target.last_error = "" if synced else f"closed the connection: {conn.close_reason}"
                refusals.note(target, refusals.of_closed(conn))
                if conn.uuid:
                    target.uuid = conn.uuid
                    # the connection may have lost the tie-break to the peer's own (inbound) one:
                    # this target still found that node
                    for via in target.found_by:
                        self._add_found_by(conn.uuid, via)
                if target.is_self:
                    return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - unreachable peers are normal; retry later
                error = dial_error(exc)
                refusals.note(target, refusals.of_dial_error(exc))
                if error != target.last_error and target.refused == refusals.CERTIFICATE:
                    log.warning("peer %s %s", target.url, error)  # a config mismatch, on this side
                elif error != target.last_error and target.refused:
                    log.warning("peer %s refuses this node: %s", target.url, error)  # a config mismatch
                else:
                    log.debug("dial %s failed: %s", target.url, exc)
                target.last_error = error
            await asyncio.sleep(delay * (0.8 + random.random() * 0.4))
            delay = min(delay * 2, 10.0)

    # -- connections -----------------------------------------------------------------------------
    def register(self, conn: PeerConnection) -> bool:
        """Keep one connection per pair: the one dialed by the smaller UUID wins."""
        node = conn.uuid or ""
        if self.cluster.swim:
            conn.shutdown("the cluster is above full_mesh_max: no peer websockets", code=SWIM_MODE,
                          notify=False)
            return False
        address = conn.url if conn.outbound else fetch_url(conn.remote_ip, conn.info.get("port"))
        if not address:
            conn.shutdown("no usable address (hello without a port)", code=PROTOCOL_ERROR)
            return False
        existing = self.conns.get(node)
        if existing is not None and existing is not conn and not existing.closed.done():
            preferred = min(self.ctx.identity.uuid, node)
            if existing.dialer == preferred or conn.dialer != preferred:
                log.debug("peer %s: duplicate connection; keeping the one dialed by %s", node[:8],
                          preferred[:8])
                conn.shutdown("duplicate connection", code=DUPLICATE, notify=False)
                return False
            log.debug("peer %s: duplicate connection; keeping the one dialed by %s", node[:8],
                      preferred[:8])
            conn.inherits = existing.synced or existing.inherits
            self.conns[node] = conn  # first, so the old one's unregister sees it was replaced
            existing.shutdown("duplicate connection", code=DUPLICATE, notify=False)
        grace = self._grace.pop(node, None)
        if grace is not None:
            grace[0].cancel()
            conn.inherits = conn.inherits or grace[1]
        self.conns[node] = conn
        self.addresses[node] = address
        if conn.outbound and conn.url in self.targets:
            self.targets[conn.url].uuid = node
            for via in self.targets[conn.url].found_by:
                self._add_found_by(node, via)
        elif not conn.outbound and not self.found_by.get(node):
            self._add_found_by(node, "inbound")
        self._spawn(self._save_node(conn, NodeStatus.ONLINE if conn.inherits else NodeStatus.SYNCING))
        return True

    def unregister(self, conn: PeerConnection) -> None:
        node = conn.uuid
        if not node:
            return
        if conn.close_code == PROTOCOL_ERROR:
            self.avail.forget(node)  # a peer that broke the protocol: none of its claims are kept
        if self.conns.get(node) is not conn:
            return  # a duplicate that lost, or one already replaced: its twin carries the node
        del self.conns[node]
        if conn.close_code == DUPLICATE:
            # the peer dropped this one of a pair: the other connection is on its way; until it
            # registers (or the grace ends) the node stays online and its holdings usable
            loop = asyncio.get_running_loop()
            self._grace[node] = (loop.call_later(DUPLICATE_GRACE, self._gone, node, conn),
                                 conn.synced or conn.inherits)
            return
        self._gone(node, conn)

    def _gone(self, node: str, conn: PeerConnection) -> None:
        self._grace.pop(node, None)
        if node in self.conns:
            return
        self.avail.set_online(node, False)
        self.addresses.pop(node, None)
        self._spawn(self._save_node(conn, NodeStatus.OFFLINE))
        if conn.close_code == SWIM_MODE:  # membership carries the node from here: not offline
            log.debug("peer %s: websocket closed, the cluster runs on membership", node[:8])
        elif conn.synced or conn.inherits:
            log.info("peer %s (%s) offline: %s", node[:8], conn.url or conn.remote_ip, conn.close_reason)
            self.ctx.bus.emit(events.NODE_OFFLINE, uuid=node)
        else:  # it never came online: nothing to announce
            log.debug("peer %s (%s) closed before it synced: %s", node[:8], conn.url or conn.remote_ip,
                      conn.close_reason)
        old = self._forget.pop(node, None)
        if old is not None:
            old.cancel()
        if node in self.avail.peers:
            delay = self.ctx.config.limits.peer_forget_after
            self._forget[node] = asyncio.get_running_loop().call_later(delay, self._forget_if_gone, node)

    def _forget_if_gone(self, node: str) -> None:
        """A peer gone for good: its holdings (possibly large) are dropped; a return resyncs."""
        self._forget.pop(node, None)
        if node not in self.conns and node not in self._grace:
            self.avail.forget(node)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def on_online(self, conn: PeerConnection) -> None:
        log.info("peer %s (%s) online", conn.node[:8], self.addresses.get(conn.node))
        self.ctx.bus.emit(events.NODE_ONLINE, uuid=conn.uuid, info=conn.info)
        self.ctx.bus.emit(events.AVAILABILITY_CHANGED, uuid=conn.uuid, ops=None)

    def on_resynced(self, conn: PeerConnection) -> None:
        """A replacement connection finished its sync: nothing changed for anyone but the holdings."""
        log.debug("peer %s: replacement connection synced", (conn.uuid or "")[:8])
        self.ctx.bus.emit(events.AVAILABILITY_CHANGED, uuid=conn.uuid, ops=None)

    def availability_changed(self, node: str, ops: list[Any]) -> None:
        self.ctx.bus.emit(events.AVAILABILITY_CHANGED, uuid=node, ops=ops)

    def node_status(self, node: str, status: NodeStatus, conn: PeerConnection) -> None:
        if self.conns.get(node) is conn:
            self._spawn(self._save_node(conn, status))

    def _add_found_by(self, node: str, via: str) -> None:
        have = self.found_by.setdefault(node, set())
        if via not in have:
            have.add(via)
            if via != "inbound":
                have.discard("inbound")

    async def _save_node(self, conn: PeerConnection, status: NodeStatus) -> None:
        info, node = conn.info, conn.node
        found = sorted(self.found_by.get(node, set()))
        values = {"hostname": str(info.get("hostname") or "")[:255],
                  "url": str(self.addresses.get(node or "") or conn.url or "")[:255],
                  "addresses": list(info.get("addresses") or [])[:16], "port": int(info.get("port") or 0),
                  "os_type": str(info.get("os_type") or "")[:64],
                  "architecture": str(info.get("architecture") or "")[:64],
                  "version": str(info.get("version") or "")[:64], "plugins": list(info.get("plugins") or [])[:64],
                  "status": status.value, "found_by": found, "last_seen": time.time()}

        def db() -> None:
            Node.insert(uuid=node, **values).on_conflict(
                conflict_target=[Node.uuid], update={getattr(Node, k): v for k, v in values.items()}
            ).execute()
        try:
            await self.ctx.run_db(db)
        except Exception as exc:  # noqa: BLE001 - a status write failing is logged, not fatal
            log.warning("cannot save node %s: %s", node, exc)

    def online(self) -> list[str]:
        """Synced nodes, with those whose duplicate connection is being replaced right now."""
        live = [u for u, c in self.conns.items() if (c.synced or c.inherits) and not c.closed.done()]
        return live + [u for u, (_, was) in self._grace.items() if was and u not in self.conns]

    def enter_swim(self) -> None:
        """The cluster grew above full_mesh_max: close every peer websocket (cluster.py)."""
        for c in list(self.conns.values()):
            c.shutdown("the cluster is above full_mesh_max: no peer websockets", code=SWIM_MODE,
                       notify=False)

    async def call(self, node: str, method: str, timeout: float = 30.0, **params: Any) -> Any:
        """Call `rpc_<method>` on a peer in either mode (calls.py): use this, not `conn(n).call`."""
        return await self.calls.call(node, method, timeout, **params)

    async def reachable(self, plugin: str | None = None) -> list[str]:
        """Peers `call` reaches now (with `plugin`: that run it), in either mode (calls.py)."""
        return await self.calls.reachable(plugin)

    async def plugins_of(self, node: str) -> tuple[str, ...] | None:
        return await self.calls.plugins_of(node)

    def conn(self, node: str) -> PeerConnection | None:
        c = self.conns.get(node)
        return c if c is not None and not c.closed.done() else None

    def url_of(self, node: str) -> str | None:
        """Where to fetch from: the URL this node dialed, or the inbound connection's remote
        address with the peer's port; never an address the peer claims in its hello (see
        policy.py). Above full_mesh_max: the member's address, which membership took only
        within peer_cidrs or as the operator named it, like a discovered one (cluster.py)."""
        return self.addresses.get(node) or self.cluster.url_of(node)

    # -- local holdings -> deltas ------------------------------------------------------------
    def local_change(self, op: str, digest: str, size: int | None) -> None:
        self.cluster.local_change(op, digest)
        before = self.avail.seq
        entry = self.avail.local_change(op, digest, size)
        if not entry:
            return
        if not self._pending_ops:
            self._pending_from = before
        self._pending_ops.append(entry)
        if self._push_handle is None:
            self._push_handle = asyncio.get_running_loop().call_later(PUSH_DELAY, self._push)

    def push_holdings(self) -> None:
        """Send the queued deltas now, not after PUSH_DELAY: a peer asked to fetch right after
        (a seeded preheat) must already count this node as a holder."""
        if self._push_handle is not None:
            self._push_handle.cancel()
        self._push()

    def _push(self) -> None:
        self._push_handle = None
        ops, self._pending_ops = self._pending_ops, []
        if not ops:
            return
        for c in list(self.conns.values()):
            if c.uuid and not c.closed.done():
                c.send_deltas(self._pending_from, ops)

    # -- probe ---------------------------------------------------------------------------------
    async def probe(self, address: str, via: str = "probe", timeout: float = 5.0) -> dict[str, Any]:
        """GET /info at `address`; if it is a Beiran node (not this one), connect it as a peer."""
        try:
            url = normalize_peer_url(address)
        except Exception as exc:  # noqa: BLE001
            raise BadRequest(f"address {address!r}: {exc}") from None
        info = await self.fetch_info(url, timeout, named=via in OPERATOR_NAMED)
        node = str(info.get("uuid", ""))
        if node == self.ctx.identity.uuid:
            raise BadRequest(f"{url} is this node")
        stale = self.targets.get(url)
        if stale is not None:
            stale.last_error = ""  # this probe's dial decides
        self.discovered(url, via)
        deadline = time.monotonic() + timeout
        target = self.targets.get(url)
        if target is not None:
            target.claimed = refusals.claimed(info)
        while time.monotonic() < deadline and node not in self.online():
            if target is not None and target.last_error:
                break  # refused or failed: say why rather than "connecting"
            await asyncio.sleep(0.05)
        info["status"] = "online" if node in self.online() else "connecting"
        if node not in self.online() and target is not None and target.last_error:
            raise UpstreamError(f"{url} (node {node[:8]}) {target.last_error}; it is dialed again in the background")
        return info

    async def fetch_info(self, url: str, timeout: float = 5.0, named: bool = False) -> dict[str, Any]:
        """GET /info of a would-be peer: discovery probes with it, so unless the operator named the
        address (`named`) it must be in peer_cidrs before anything is sent there."""
        if not named and not await self.policy.allows_url(url):
            raise UpstreamError(f"{url} is outside peer_cidrs: not contacted")
        req = HTTPRequest(url + "/info", connect_timeout=timeout, request_timeout=timeout,
                          headers=self.ctx.auth.headers("GET", "/info"))
        try:
            resp = await AsyncHTTPClient().fetch(req)
            info = json.loads(resp.body)
            if not isinstance(info, dict) or "uuid" not in info:
                raise ValueError("not a Beiran /info answer")
            return info
        except HTTPClientError as exc:
            raise UpstreamError(f"{url} answered {exc.code}") from None
        except (OSError, ValueError, TimeoutError) as exc:
            raise UpstreamError(f"cannot reach a Beiran node at {url}: {exc}") from None

    async def stop(self) -> None:
        self._closing = True
        self.cluster.stop()
        for t in self.targets.values():
            if t.task:
                t.task.cancel()
        for handle in [*(g[0] for g in self._grace.values()), *self._forget.values()]:
            handle.cancel()
        for c in list(self.conns.values()):
            c.shutdown("daemon shutting down", code=1001)
