"""Core routes: /info, /ping, /status, /nodes, /config, /metrics, /stats."""

from __future__ import annotations

import time
from typing import Any

from beiran import __version__
from beiran.access import Access
from beiran.errors import BadRequest
from beiran.handlers import BaseHandler, JSONEndpoint, RPCEndpoint, rpc_command
from beiran.models.node import Node
from beiran.peer import refusals


class InfoHandler(JSONEndpoint):
    access = Access.PUBLIC

    async def get(self) -> None:
        self.write_json(self.ctx.identity.to_dict())


class PingHandler(BaseHandler):
    access = Access.PUBLIC

    def get(self) -> None:
        self.write_json({"pong": True, "uuid": self.ctx.identity.uuid})


class StatusHandler(JSONEndpoint):
    access = Access.PUBLIC

    async def get(self) -> None:
        ident = self.ctx.identity
        self.write_json({"status": "ready", "uuid": ident.uuid, "version": __version__,
                         "uptime": round(time.time() - ident.started, 1),
                         "peers_online": len(await self.ctx.peers.reachable()),
                         "store": {"blobs": len(self.ctx.store.entries),
                                   "bytes": self.ctx.store.total_size()},
                         "plugins": await self.ctx.plugins.status_list()})


class NodesHandler(RPCEndpoint):
    """GET lists known nodes; `POST ?cmd=probe` (admin) probes an address and connects it."""

    access = Access.PUBLIC

    async def get(self) -> None:
        show_all = self.get_query_argument("all", "false").lower() in ("1", "true", "yes")
        rows = await self.ctx.run_db(lambda: [n.to_dict() for n in Node.select()])
        me = self.ctx.identity.uuid
        cluster = self.ctx.peers.cluster
        members = {m["uuid"]: m for m in cluster.members()}
        nodes = []
        # nodes refusing this node (or refused by it) at their last dial, by the address dialed
        refused = {r["url"]: r for r in refusals.rows(self.ctx.peers.targets.values(), self.ctx.peers.conns)}
        for n in rows:
            if n["uuid"] == me:
                continue
            n["status"] = self.ctx.peers.calls.status_of(n["uuid"])
            if n["status"] == "offline" and n["url"] in refused:
                n.update({k: v for k, v in refused.pop(n["url"]).items() if k in ("status", "refused")})
            n["found_by"] = sorted(self.ctx.peers.found_by.get(n["uuid"], set()) or n["found_by"])
            member = members.pop(n["uuid"], None)
            n["membership"] = member["membership"] if member else None
            if cluster.swim and member:  # no websockets above full_mesh_max: membership says
                n["url"] = member["url"]
            if show_all or n["status"] not in ("offline",):
                nodes.append(n)
        nodes += refused.values()
        for member in members.values() if cluster.swim else ():  # known only through membership
            status = self.ctx.peers.calls.status_of(member["uuid"])
            if show_all or status != "offline":
                nodes.append({**member, "status": status, "found_by": ["membership"], "hostname": "",
                              "version": "", "last_seen": None})
        self_row = {**self.ctx.identity.to_dict(), "status": "ready", "found_by": ["self"],
                    "last_seen": time.time(), "self": True, "membership": "alive",
                    "cluster": cluster.summary()}
        self.write_json({"nodes": [self_row, *sorted(nodes, key=lambda n: n["url"])],
                         "cluster": cluster.summary()})

    @rpc_command
    async def probe(self) -> dict[str, Any]:
        body = self.json_object()
        address = body.get("address")
        if not isinstance(address, str) or not address:
            raise BadRequest("probe needs {\"address\": \"HOST:PORT\"}")
        return await self.ctx.peers.probe(address)


class NodeHandler(JSONEndpoint):
    access = Access.PUBLIC

    async def get(self, node: str) -> None:
        import uuid

        from beiran.errors import NotFound

        try:
            node = str(uuid.UUID(node))
        except ValueError:
            raise BadRequest(f"not a node UUID: {node[:64]!r} (see `beiran node list`)") from None
        if node == self.ctx.identity.uuid:
            self.write_json({**self.ctx.identity.to_dict(), "status": "ready", "self": True})
            return
        rows = await self.ctx.run_db(lambda: [n.to_dict() for n in Node.select().where(Node.uuid == node)])
        cluster = self.ctx.peers.cluster
        member = next((m for m in cluster.members() if m["uuid"] == node), None)
        refused = next((r for r in refusals.rows(self.ctx.peers.targets.values(), self.ctx.peers.conns)
                        if r["uuid"] == node), None)  # it refuses this node: `node list` shows it so
        if not rows:  # known only through membership (a large cluster), by its refusal, or not at all
            if member is None and refused is None:
                raise NotFound(f"node {node[:40]} is not known")
            rows = [{**member, "hostname": "", "version": "", "found_by": ["membership"], "last_seen": None}
                    if member is not None else dict(refused or {})]
        rows[0]["status"] = self.ctx.peers.calls.status_of(node)
        if refused is not None and rows[0]["status"] == "offline" and rows[0].get("url") == refused["url"]:
            rows[0].update(status=refused["status"], refused=refused["refused"])
        rows[0]["membership"] = member["membership"] if member else None
        holdings = self.ctx.availability.peers.get(node)
        rows[0]["blobs"] = len(holdings.blobs) if holdings else 0
        self.write_json(rows[0])


class ConfigHandler(JSONEndpoint):
    def get(self) -> None:
        self.write_json(self.ctx.config.to_public_dict())


class MetricsHandler(BaseHandler):
    access = Access.PUBLIC

    def get(self) -> None:
        from prometheus_client import CONTENT_TYPE_LATEST

        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(self.ctx.metrics.render())


class StatsHandler(JSONEndpoint):
    """Counters for anyone; the data path and disk figures only on the admin socket (over TCP they
    would tell a peer where the data lives and how much disk a cache-filling attack needs)."""

    access = Access.PUBLIC

    def get(self) -> None:
        peers = {c.uuid: c.counts for c in self.ctx.peers.conns.values() if c.uuid}
        store = self.ctx.store.stats(local=self.is_unix_socket())
        self.write_json({"metrics": self.ctx.metrics.snapshot(), "store": store,
                         "peer_messages": peers, "fetches_in_progress": len(self.ctx.fetcher.jobs),
                         "cluster": self.ctx.peers.cluster.summary()})


ROUTES = [
    (r"/info", InfoHandler),
    (r"/ping", PingHandler),
    (r"/status", StatusHandler),
    (r"/nodes", NodesHandler),
    (r"/nodes/([^/]{1,200})", NodeHandler),
    (r"/config", ConfigHandler),
    (r"/metrics", MetricsHandler),
    (r"/stats", StatsHandler),
]
