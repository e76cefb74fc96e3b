"""Packuments are kept on disk (file + row) in the store's batched database writes: several served at
once are all there after a restart, and answer for the upstream while it is down."""

from __future__ import annotations

import json

import pytest

from beiran_testkit.verdaccio import npm_daemon_config

pytestmark = pytest.mark.cluster

NAMES = [f"beiran-test-p{i:02d}" for i in range(1, 7)]


def test_packuments_served_together_are_all_stored_and_answer_after_a_restart_with_the_upstream_down(
        cluster, upstream, registry):
    (node,) = cluster.start(1, config=npm_daemon_config(upstream.url))
    for kind in ("application/json", "application/vnd.npm.install-v1+json"):
        for name in NAMES:
            status, headers, _ = node.tcp("GET", f"/npm/{name}", headers={"Accept": kind})
            assert status == 200 and "Warning" not in headers
    node.stop()
    upstream.stop()
    node.start()
    for kind in ("application/json", "application/vnd.npm.install-v1+json"):
        for name in NAMES:
            status, headers, body = node.tcp("GET", f"/npm/{name}", headers={"Accept": kind})
            assert status == 200 and "stale" in headers.get("Warning", ""), (name, kind, status, headers)
            doc = json.loads(body)
            assert doc["name"] == name and "1.0.0" in doc["versions"]
            assert headers["Content-Type"].startswith(kind)
            integrity = doc["versions"]["1.0.0"]["dist"]["integrity"]
            assert integrity == registry.pub(name, "1.0.0").integrity
    assert "offline answer (npm): answering packument beiran-test-p06 (full) with the copy stored" in node.log()
