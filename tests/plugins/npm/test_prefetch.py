"""A served packument starts its latest tarball's download from a peer that holds it (never from
the origin), so npm's tarball request, which comes after it resolved the whole tree, finds it here."""

from __future__ import annotations

import time

import pytest

from beiran_testkit.daemon import wait_until
from beiran_testkit.verdaccio import npm_daemon_config

pytestmark = pytest.mark.cluster


def _event(node, name: str) -> int:
    npm = next(p for p in node.api("GET", "/status")["plugins"] if p["name"] == "npm")
    return npm["counters"].get(name, 0)


def _stored(node) -> set[str]:
    return {b["digest"] for b in node.api("GET", "/blobs")["blobs"]}


def test_a_served_packument_prefetches_its_tarball_from_a_peer_never_from_the_origin(cluster, upstream, registry):
    # no origin delegation: n1 fetches the tarball itself (else n2, as its owner, might hold it already)
    config = {**npm_daemon_config(upstream.url, prefetch_max_bytes=16 << 20), "fetch": {"origin_delegation": False}}
    n1, n2 = cluster.start(2, config=config)
    held = registry.pub("beiran-test-p21", "1.0.0")
    status, _, body = n1.tcp("GET", f"/npm/beiran-test-p21/-/{held.file}")
    assert status == 200 and body == held.tarball
    wait_until(lambda: any(b["digest"] == held.digest and b["nodes"].get(n1.uuid) == "complete"
                           for b in n2.api("GET", "/blobs?all=true")["blobs"]), 10, what="n1's tarball announced")
    assert held.digest not in _stored(n2)

    status, _, _ = n2.tcp("GET", "/npm/beiran-test-p21", headers={"Accept": "application/json"})
    assert status == 200
    wait_until(lambda: held.digest in _stored(n2), 10, what="the tarball prefetched from n1")
    assert _event(n2, "tarballs_prefetched") == 1
    assert n2.metrics().get("beiran_fetch_bytes_total{source=peer}") == len(held.tarball)
    # npm's own request now finds it stored
    status, _, body = n2.tcp("GET", f"/npm/beiran-test-p21/-/{held.file}")
    assert status == 200 and body == held.tarball
    assert _event(n2, "tarballs_local") == 1 and _event(n2, "tarballs_fetched") == 0
    assert upstream.tarball_requests() == {f"/beiran-test-p21/-/{held.file}": 1}  # n1's, once

    # a tarball no peer holds is not guessed at: the origin is not asked for it
    status, _, _ = n2.tcp("GET", "/npm/beiran-test-p22", headers={"Accept": "application/json"})
    assert status == 200
    time.sleep(0.5)
    assert _event(n2, "tarballs_prefetched") == 1
    assert upstream.tarball_requests() == {f"/beiran-test-p21/-/{held.file}": 1}
    assert registry.pub("beiran-test-p22", "1.0.0").digest not in _stored(n2)
