"""`/metrics` with every plugin: each plugin's counters and the HTTP and CRI request metrics are
exported through prometheus-client, and every query of the Grafana dashboard in contrib/ names a
metric the daemon exports."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from beiran_testkit.cri import CRIClient

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "contrib" / "grafana" / "beiran-dashboard.json"
SUFFIXES = ("_total", "_bucket", "_sum", "_count", "_created")


def _scrape(node) -> dict[str, dict]:
    status, _, body = node.tcp("GET", "/metrics")
    assert status == 200
    out: dict[str, dict] = {}
    for family in text_string_to_metric_families(body.decode()):
        out[family.name] = {"type": family.type,
                            "samples": [(s.name, s.labels, s.value) for s in family.samples]}
    return out


def _value(families: dict[str, dict], sample: str, **labels: str) -> float:
    for fam in families.values():
        for name, lab, value in fam["samples"]:
            if name == sample and all(lab.get(k) == v for k, v in labels.items()):
                return value
    return 0.0


@pytest.fixture
def node(cluster):
    sockdir = tempfile.mkdtemp(prefix="bmet-", dir="/tmp")
    try:
        (n,) = cluster.start(1, config={"plugins": {
            "k8s": {"socket": f"{sockdir}/cri.sock", "runtime_endpoint": f"unix://{sockdir}/none.sock",
                    "runtime_timeout": 2},
            "zeroconf": {"enabled": False},
            "dns": {"enabled": False}}})
        n.cri_socket = f"{sockdir}/cri.sock"
        yield n
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)


def test_plugin_http_and_cri_metrics_are_exported(node):
    statuses = {p["name"]: p["status"] for p in node.api("GET", "/status")["plugins"]}
    assert {statuses[p] for p in ("docker", "apt", "npm")} == {"ready"}, statuses
    assert statuses["k8s"] == "degraded", statuses  # up, and saying there is no container runtime
    assert node.tcp("GET", "/npm/-/beiran/packages")[0] == 403  # admin route over TCP: counted, refused
    assert node.tcp("GET", "/v2/")[0] == 200
    with CRIClient(node.cri_socket) as cri, pytest.raises(grpc.RpcError) as err:
        cri.list()  # no container runtime behind it: UNAVAILABLE, counted all the same
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE

    families = _scrape(node)
    assert _value(families, "beiran_http_requests_total", plugin="npm", code="403") == 1
    assert _value(families, "beiran_http_requests_total", plugin="docker", code="200") >= 1
    assert _value(families, "beiran_http_request_seconds_count", plugin="docker") >= 1
    assert _value(families, "beiran_cri_requests_total", method="ListImages", code="UNAVAILABLE") == 1
    assert _value(families, "beiran_cri_request_seconds_count", method="ListImages") == 1
    events = {(lab["plugin"], lab["event"]) for name, lab, _ in families["beiran_plugin_events"]["samples"]}
    assert ("docker", "manifests_prefetched") in events, events
    assert families["beiran_fetch_bytes"]["type"] == "counter"  # bytes by source: local / peer / origin


def test_every_dashboard_query_names_an_exported_metric(node):
    node.tcp("GET", "/v2/")
    with CRIClient(node.cri_socket) as cri, pytest.raises(grpc.RpcError):
        cri.list()
    exported = set(_scrape(node))
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 10
    for expr in exprs:
        names = re.findall(r"\bbeiran_[a-z0-9_]+", expr)
        assert names, f"a query names no Beiran metric: {expr}"
        for name in names:
            family = next((name[: -len(s)] for s in SUFFIXES if name.endswith(s) and name[: -len(s)] in exported),
                          name)
            assert family in exported, f"{name} (in {expr!r}) is not exported; exported: {sorted(exported)}"
