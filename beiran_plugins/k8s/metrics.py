"""Prometheus metrics of the CRI image service: calls by method and gRPC code, and their duration
(a PullImage's covers the access check, the cluster fetch and containerd's pull)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


class CRIMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.calls = Counter("beiran_cri_requests", "CRI ImageService calls from kubelet, by method and gRPC code",
                             ["method", "code"], registry=registry)
        self.seconds = Histogram("beiran_cri_request_seconds", "Time to answer a CRI ImageService call",
                                 ["method"], registry=registry,
                                 buckets=(.005, .025, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600))

    def observe(self, method: str, code: str, seconds: float) -> None:
        self.calls.labels(method, code).inc()
        self.seconds.labels(method).observe(seconds)
