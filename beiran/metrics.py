"""Counters for `GET /metrics` (Prometheus text format) and `beiran stats`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

if TYPE_CHECKING:
    from beiran.context import DaemonContext


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.fetch_requests = Counter("beiran_fetch_requests", "Blob fetches by source", ["source"], registry=r)
        self.fetch_bytes = Counter("beiran_fetch_bytes", "Blob bytes fetched by source", ["source"], registry=r)
        self.verify_failures = Counter("beiran_verification_failures",
                                       "Downloads whose bytes did not match their digest", registry=r)
        self.peer_failures = Counter("beiran_peer_failures", "Peer transfers that failed part-way",
                                     registry=r)
        self.served_bytes = Counter("beiran_served_bytes", "Blob bytes served to peers", registry=r)
        self.served_requests = Counter("beiran_served_requests", "Blob requests served to peers",
                                       registry=r)
        self.peer_connections = Counter("beiran_peer_connections", "Blob requests to peers, by whether their "
                                        "connection was new or kept alive", ["connection"], registry=r)
        self.peer_messages = Counter("beiran_peer_messages", "Peer protocol messages received", ["type"],
                                     registry=r)
        self.store_blobs = Gauge("beiran_store_blobs", "Blobs in the local store", registry=r)
        self.store_bytes = Gauge("beiran_store_bytes", "Bytes in the local store", registry=r)
        self.peers_online = Gauge("beiran_peers_online", "Peers connected and synced", registry=r)

    def bind(self, ctx: DaemonContext) -> None:
        self.store_blobs.set_function(lambda: len(ctx.store.entries))
        self.store_bytes.set_function(ctx.store.total_size)
        self.peers_online.set_function(lambda: len(ctx.peers.online()))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def snapshot(self) -> dict[str, Any]:
        """Counters as a flat dict, for JSON."""
        out: dict[str, Any] = {}
        for metric in self.registry.collect():
            for s in metric.samples:
                if s.name.endswith("_created"):
                    continue
                key = s.name + "".join(f"{{{k}={v}}}" for k, v in sorted(s.labels.items()))
                out[key] = s.value
        return out
