"""The cluster's shape at run time: full mesh while small, SWIM + who-has directory when large.

Why: below `[cluster] full_mesh_max` members every node keeps a websocket to every peer (cheap,
fast, and what the exchange relies on today). Above it that costs N connections and heartbeats per
node and N copies of every peer's holdings, so the node switches, with no restart, to membership
by SWIM (beiran/peer/membership.py) over authenticated datagrams (transport.py), holdings in the
one-hop directory (directory.py), and a bounded pool of peer links (links.py). It switches back
below 3/4 of the threshold (hysteresis: a cluster at the edge does not flap).

Membership and the directory run in both modes (a datagram per probe interval), so the member
count the switch needs is always known, and the directory is filled before it is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from beiran import events
from beiran.peer.availability import COMPLETE
from beiran.peer.directory import Directory, DirectoryConfig
from beiran.peer.links import HolderPicker, LinkPool
from beiran.peer.membership import ALIVE, DEAD, GONE, Membership, SwimConfig
from beiran.peer.policy import PeerPolicy, _ip
from beiran.peer.transport import DIRECTORY, MEMBERSHIP, DatagramTransport, join_addr, split_addr

if TYPE_CHECKING:
    from beiran.context import DaemonContext

log = logging.getLogger("beiran.peer")
FULL_MESH, SWIM = "full mesh", "swim"
#: directory batches travel in one datagram each: at most 16 ops, and as many as fit (transport.py)
DIRECTORY_BATCH = 16
#: seconds between anti-entropy view comparisons, by cluster size (see _check_mode)
SYNC_MIN, SYNC_MAX = 5.0, 30.0


class ClusterService:
    def __init__(self, ctx: DaemonContext) -> None:
        self.ctx = ctx
        cfg = ctx.config.cluster
        self.full_mesh_max = cfg.full_mesh_max
        self.policy = PeerPolicy(ctx.config)
        self.named_hosts: set[str] = set()  # IPs of addresses the operator named: exempt from peer_cidrs
        self.swim = False
        self.was_swim = False  # this run was above full_mesh_max at some point
        #: set while the cluster is a full mesh: the dialers wait on it in swim mode
        self.full_mesh = asyncio.Event()
        self.full_mesh.set()
        self.switched_at = time.time()
        self.membership: Membership | None = None
        self.directory: Directory | None = None
        self.transport: DatagramTransport | None = None
        self.addr = ""
        self.links: LinkPool[str] = LinkPool(lambda node: node, self._close_link, max_open=cfg.max_links)
        self.picker = HolderPicker()
        self.in_flight = 0  # transfers and calls to peers running now (their connections are open)
        self._pending_seeds: list[str] = []
        self._tasks: set[asyncio.Future[Any]] = set()

    # -- start and stop ----------------------------------------------------------------------------
    async def start(self) -> None:
        ident = self.ctx.identity
        host = urlsplit(ident.url).hostname or ""
        if _ip(host) is None:
            log.warning("membership off: this node's address %s is not an IP address; the cluster "
                        "stays a full mesh", host)
            return
        self.addr = join_addr(host, ident.port)
        loop = asyncio.get_running_loop()
        bind = self.ctx.config.listen_host
        try:
            _, proto = await loop.create_datagram_endpoint(
                lambda: DatagramTransport(ident.uuid, self.ctx.config.cluster_token, self.allowed, self._deliver),
                local_addr=(bind or "0.0.0.0", self.ctx.config.listen_port))
        except OSError as exc:
            log.warning("membership off: cannot bind UDP %s:%d (%s); the cluster stays a full mesh",
                        bind, ident.port, exc.strerror)
            return
        self.transport = proto
        swim_cfg = SwimConfig(sync_interval=SYNC_MIN, max_packet=proto.room)
        self.membership = Membership(ident.uuid, self.addr, self._send_membership, loop, swim_cfg,
                                     addr_ok=self._addr_ok)
        self.directory = Directory(self.membership, self._send_directory, loop,
                                   DirectoryConfig(batch_ops=DIRECTORY_BATCH, max_message=proto.room,
                                                   lookup_timeout=0.25))
        self.membership.on_change(self._changed)
        for digest, (state, _) in list(self.ctx.availability.local.items()):
            if state == COMPLETE:
                self.directory.add(digest)
        self.membership.start(self._pending_seeds)
        self._pending_seeds = []

    def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self.membership is not None:
            self.membership.leave()  # tells a few members at once, so the others need not find out
            self.membership.stop()
        if self.transport is not None:
            self.transport.close()

    # -- addresses -----------------------------------------------------------------------------------
    def allowed(self, host: str) -> bool:
        """May this node hear from, or send to, `host`: peer_cidrs, or an address the operator named."""
        return host in self.named_hosts or self.policy.allows_ip(host)

    def _addr_ok(self, addr: str) -> bool:
        where = split_addr(addr)
        return where is not None and _ip(where[0]) is not None and self.allowed(where[0])

    def seed(self, url: str, named: bool) -> None:
        """A peer URL from config or discovery: join the cluster through it."""
        self._spawn(self._seed(url, named))

    async def _seed(self, url: str, named: bool) -> None:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port or 80
        if _ip(host) is None:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_DGRAM)
            except OSError:
                return
            host = str(infos[0][4][0]) if infos else ""
        if not host or (not named and not self.policy.allows_ip(host)):
            return
        if named:
            self.named_hosts.add(host)
        addr = join_addr(host, port)
        if addr == self.addr:
            return
        if self.membership is None:
            self._pending_seeds.append(addr)
        elif not any(m.addr == addr for m in self.membership.members.values()):
            self.membership.join([addr])

    # -- datagrams ---------------------------------------------------------------------------------------
    def _send_membership(self, addr: str, data: bytes) -> None:
        if self.transport is not None:
            self.transport.send(MEMBERSHIP, addr, data)

    def _send_directory(self, node: str, data: bytes) -> None:
        m = self.membership.members.get(node) if self.membership else None
        if m is not None and self.transport is not None:
            self.transport.send(DIRECTORY, m.addr, data)

    def _deliver(self, channel: bytes, sender: str, addr: str, payload: bytes) -> None:
        if channel == MEMBERSHIP and self.membership is not None:
            self.membership.on_message(addr, payload)
        elif channel == DIRECTORY and self.directory is not None:
            self.directory.on_message(sender, payload)  # the sender's UUID as the datagram proved it

    # -- membership changes and the mode ---------------------------------------------------------------
    def _changed(self, node: str, old: str | None, new: str) -> None:
        if node != self.ctx.identity.uuid and new in (DEAD, GONE):
            self.links.drop(node)
            if self.swim and new == DEAD:
                log.info("peer %s offline: membership declared it dead", node[:8])
                self.ctx.availability.forget(node)
                self.ctx.bus.emit(events.NODE_OFFLINE, uuid=node)
        self._check_mode()
        if self.was_swim and not self.swim and node != self.ctx.identity.uuid:
            self._mesh_member(node, new)

    def _mesh_member(self, node: str, state: str) -> None:
        """Back to a full mesh after running as a large cluster: many members were known only by
        gossip, so the mesh dials them too (as discovery would: peer_cidrs apply)."""
        url = self.url_of(node)
        m = self.membership.members.get(node) if self.membership else None
        where = f"http://{m.addr}" if m is not None else url
        if state in (DEAD, GONE):
            if where:
                self.ctx.peers.vanished(where, via="membership")
        elif url:
            self.ctx.peers.discovered(url, via="membership")

    def _check_mode(self) -> None:
        assert self.membership is not None
        live = len(self.membership.live_ids())
        # anti-entropy heals what gossip missed (a member that joined through a seed that did not
        # know another one yet): often while the cluster is small, every 30 s when it is large
        self.membership.cfg.sync_interval = min(SYNC_MAX, SYNC_MIN * max(1.0, live / 32))
        if not self.swim and live > self.full_mesh_max:
            self.swim, self.was_swim, self.switched_at = True, True, time.time()
            self.full_mesh.clear()
            log.info("cluster mode: swim (%d members > full_mesh_max %d): peer websockets close, "
                     "holdings move to the directory", live, self.full_mesh_max)
            self.ctx.peers.enter_swim()
        elif self.swim and live <= self.full_mesh_max * 3 // 4:
            self.swim, self.switched_at = False, time.time()
            log.info("cluster mode: full mesh (%d members)", live)
            self.full_mesh.set()
            for member in list(self.membership.members.values()):
                if member.id != self.ctx.identity.uuid and member.state != DEAD:
                    self._mesh_member(member.id, member.state)

    @property
    def mode(self) -> str:
        return SWIM if self.swim else FULL_MESH

    # -- what the fetcher and the API ask ------------------------------------------------------------
    def state(self, node: str) -> str | None:
        return self.membership.state(node) if self.membership else None

    def url_of(self, node: str) -> str | None:
        """Where a member serves blobs: its membership address (checked when it was learned)."""
        m = self.membership.members.get(node) if self.membership else None
        where = split_addr(m.addr) if m is not None and m.state != DEAD else None
        if where is None or not self.allowed(where[0]):
            return None
        return f"http://{join_addr(*where)}"

    async def holders(self, digest: str) -> list[str]:
        """Live holders of `digest` by the directory: one round trip to its owners."""
        if self.directory is None:
            return []
        fut: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()

        def reply(found: list[str]) -> None:
            if not fut.done():
                fut.set_result(found)
        self.directory.lookup(digest, reply)
        me = self.ctx.identity.uuid
        return [h for h in await fut if h != me]

    def owners(self, digest: str) -> list[str]:
        """The digest's owner chain (rank 1, 2, 3 among live members, this node included)."""
        if self.directory is None or self.membership is None:
            return []
        return list(self.directory.ranker.owners(digest, self.membership))

    def local_change(self, op: str, digest: str) -> None:
        if self.directory is None:
            return
        if op == "+":
            self.directory.add(digest)
        elif op == "-":
            self.directory.remove(digest)

    def members(self) -> list[dict[str, Any]]:
        if self.membership is None:
            return []
        return [{"uuid": m.id, "url": f"http://{m.addr}", "membership": m.state, "incarnation": m.inc}
                for m in self.membership.members.values() if m.id != self.ctx.identity.uuid]

    def summary(self) -> dict[str, Any]:
        live = len(self.membership.live_ids()) if self.membership else 1
        out: dict[str, Any] = {"mode": self.mode, "members": live, "full_mesh_max": self.full_mesh_max,
                               "membership": "on" if self.membership else "off", "links_open": self.links_open()}
        if self.transport is not None:
            out["datagrams"] = dict(self.transport.stats)
        return out

    # -- links ---------------------------------------------------------------------------------------
    def links_open(self) -> int:
        """Open peer connections of this node: websockets, kept-alive HTTP connections, transfers."""
        sockets = sum(1 for c in self.ctx.peers.conns.values() if not c.closed.done())
        return sockets + self.ctx.fetcher.peers.pool.idle_count() + self.in_flight

    @contextlib.contextmanager
    def links_for(self, nodes: list[str]) -> Iterator[None]:
        """Hold links to `nodes` for one transfer: at most `max_links` peers have links at once (the
        least recently used idle one is closed first); raises PoolExhausted when all are busy."""
        held: list[str] = []
        counted = 0
        try:
            for node in nodes:
                self.links.acquire(node)
                held.append(node)
                self.picker.in_flight.add(node)
            counted = len(held)
            self.in_flight += counted
            yield
        finally:
            self.in_flight -= counted
            for node in held:
                self.links.release(node)
                self.picker.done(node)

    def _close_link(self, node: str, _link: str) -> None:
        url = self.url_of(node) or self.ctx.peers.addresses.get(node)
        where = urlsplit(url) if url else None
        if where is not None and where.hostname:
            self.ctx.fetcher.peers.pool.drop(where.hostname, where.port or 80)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


__all__ = ["ALIVE", "FULL_MESH", "SWIM", "ClusterService"]
