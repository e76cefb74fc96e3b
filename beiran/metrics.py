"""Counters for `GET /metrics` (Prometheus text format) and `beiran stats`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from beiran import origin_connections

if TYPE_CHECKING:
    from beiran.context import DaemonContext

#: (plugin, status) pairs whose series are kept looked up (far more than plugins x status codes in use)
MAX_REQUEST_SERIES = 1024


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
        self.peer_refused = Counter("beiran_peer_requests_refused",
                                    "Peer requests refused by a cap (fetches, bytes)", ["cap"], registry=r)
        self.peer_connections = Counter("beiran_peer_connections", "Blob requests to peers, by whether their "
                                        "connection was new or kept alive", ["connection"], registry=r)
        self.peer_messages = Counter("beiran_peer_messages", "Peer protocol messages received", ["type"],
                                     registry=r)
        self.offline_answers = Counter("beiran_offline_answers", "Metadata answered (or refused) while an "
                                       "upstream was down, by outcome: own, agreed, refused, unknown",
                                       ["plugin", "outcome"], registry=r)
        self.store_blobs = Gauge("beiran_store_blobs", "Blobs in the local store", registry=r)
        self.store_bytes = Gauge("beiran_store_bytes", "Bytes in the local store", registry=r)
        self.peers_online = Gauge("beiran_peers_online", "Peers this node can reach: connected and synced "
                                  "in a full mesh, members not declared dead above full_mesh_max", registry=r)
        self.http_requests = Counter("beiran_http_requests", "HTTP requests answered, by the plugin whose "
                                     "route answered (core: the daemon's own) and status code", ["plugin", "code"],
                                     registry=r)
        self.http_seconds = Histogram("beiran_http_request_seconds", "Time to answer an HTTP request (streamed "
                                      "bodies included), by plugin", ["plugin"], registry=r,
                                      buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300))
        self.peer_entries = Gauge("beiran_peer_entries", "Blobs announced by peers, held in memory",
                                  registry=r)
        self.peer_links = Gauge("beiran_peer_links_open", "Open connections of this node to peers: peer "
                                "websockets, kept-alive and in-flight HTTP connections to peers", registry=r)
        self.cluster_members = Gauge("beiran_cluster_members", "Live members (alive or suspect) this "
                                     "node's membership knows, itself included", registry=r)
        self.cluster_swim = Gauge("beiran_cluster_swim", "1 when the cluster is above full_mesh_max "
                                  "(membership, directory, link pool), 0 while it is a full mesh", registry=r)
        self.connections_refused = Counter("beiran_connections_refused",
                                           "TCP connections closed at accept: over a connection cap",
                                           registry=r)
        r.register(OriginConnections())
        #: (plugin, status) -> the request counter's and the histogram's child for it: `labels()`
        #: builds and locks on every call, and every answered request would pay it twice
        self._request_series: dict[tuple[str, int], tuple[Any, Any]] = {}

    def observe_request(self, plugin: str, status: int, seconds: float) -> None:
        """One answered HTTP request: `beiran_http_requests_total{plugin, code}` and
        `beiran_http_request_seconds{plugin}`. Plugins and status codes are few (Tornado answers
        100-599 only), so the children looked up are kept."""
        series = self._request_series.get((plugin, status))
        if series is None:
            series = (self.http_requests.labels(plugin, str(status)), self.http_seconds.labels(plugin))
            if len(self._request_series) < MAX_REQUEST_SERIES:
                self._request_series[(plugin, status)] = series
        series[0].inc()
        series[1].observe(seconds)

    def bind(self, ctx: DaemonContext) -> None:
        self.registry.register(PluginEvents(ctx))
        self.store_blobs.set_function(lambda: len(ctx.store.entries))
        self.store_bytes.set_function(ctx.store.total_size)
        self.peers_online.set_function(lambda: len(ctx.peers.calls.reachable_nodes()))
        self.peer_entries.set_function(ctx.availability.peer_entries)
        cluster = ctx.peers.cluster
        self.peer_links.set_function(cluster.links_open)
        self.cluster_members.set_function(lambda: cluster.summary()["members"])
        self.cluster_swim.set_function(lambda: 1 if cluster.swim else 0)

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


class PluginEvents:
    """`beiran_plugin_events_total{plugin, event}`: what each plugin counts (`BasePlugin.counters()`),
    read at scrape time, so a plugin keeps plain counters and still shows up in Prometheus."""

    def __init__(self, ctx: DaemonContext) -> None:
        self.ctx = ctx

    def describe(self) -> list[CounterMetricFamily]:
        return [CounterMetricFamily("beiran_plugin_events", "Events counted by each plugin",
                                    labels=["plugin", "event"])]

    def collect(self) -> list[CounterMetricFamily]:
        family = self.describe()[0]
        plugins = self.ctx.plugins
        for rec in (plugins.records.values() if plugins is not None else ()):
            if rec.instance is None or rec.error:
                continue
            try:
                counts = rec.instance.counters()
            except Exception:  # noqa: BLE001 - one plugin's counters must never break a scrape
                continue
            for event, value in sorted(counts.items()):
                family.add_metric([rec.name, str(event)], float(value))
        return [family]


class OriginConnections:
    """The origin connection pool (beiran/origin_connections.py), read at scrape time: how often a
    request to an origin rode a kept-alive connection instead of a new TCP (and TLS) handshake.

    No per-origin label: the pool's hosts include those an origin names itself (a registry's blob
    redirects to its storage, its token realm; npm tarball URLs), so they are not bounded by config."""

    def describe(self) -> list[CounterMetricFamily | GaugeMetricFamily]:
        return [CounterMetricFamily("beiran_origin_connections_opened", "Connections opened to origins (kept "
                                    "alive for reuse)"),
                CounterMetricFamily("beiran_origin_connections_reused", "Origin requests that took a kept-alive "
                                    "connection instead of opening one"),
                GaugeMetricFamily("beiran_origin_connections_idle", "Kept-alive origin connections idle now")]

    def collect(self) -> list[CounterMetricFamily | GaugeMetricFamily]:
        opened, reused, idle = origin_connections.totals()
        families = self.describe()
        for family, value in zip(families, (opened, reused, idle), strict=True):
            family.add_metric([], float(value))
        return families
