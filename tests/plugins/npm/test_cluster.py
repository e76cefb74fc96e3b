"""Several nodes at once, an origin outage, a tampering peer (Must show 2, 3 and 5)."""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from beiran_testkit.daemon import wait_until
from beiran_testkit.verdaccio import (
    ALPHA,
    SCOPED,
    installed_tree,
    lock_packages,
    npm,
    npm_daemon_config,
    write_project,
)

pytestmark = pytest.mark.cluster


def test_four_nodes_install_thirty_packages_at_once_each_tarball_leaves_the_origin_once(
        cluster, upstream, registry, work):
    """Must show 2."""
    nodes = cluster.start(4, config=npm_daemon_config(upstream.url))
    projects = [write_project(work / f"p{i}", registry.project30) for i in range(4)]

    def install(i: int) -> subprocess.CompletedProcess:
        return npm(["install"], projects[i], nodes[i].url + "/npm/", work / f"cache{i}")

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(install, range(4)))
    trees = [installed_tree(p) for p in projects]
    assert all(t == trees[0] for t in trees)
    assert len(lock_packages(projects[0])) == 30
    tarballs = upstream.tarball_requests()
    assert len(tarballs) == 30 and set(tarballs.values()) == {1}, tarballs
    # ...and every node ended up with all 30, verified and pinned
    wanted = {registry.pub(f"beiran-test-p{i:02d}", "1.0.0").digest for i in range(1, 31)}
    for node in nodes:
        listed = node.api("GET", "/npm/-/beiran/packages")["packages"]
        assert {p["digest"] for p in listed} >= wanted


def test_origin_stopped_nodes_still_install_from_the_cluster(cluster, upstream, registry, work):
    """Must show 3: the last good packuments (this node's, or what two peers agree on) and peers'
    tarballs. (One peer's packument alone is never served: test_security_offline.py.)"""
    # no origin delegation: node 1 alone fetches tarballs; node 2 stores the packuments too, node 3 nothing
    n1, n2, n3 = cluster.start(3, config={**npm_daemon_config(upstream.url), "fetch": {"origin_delegation": False}})
    deps = {SCOPED: "^1.0.0", ALPHA: "^2.0.0", "beiran-test-p02": "^1.0.0"}
    p1 = write_project(work / "p1", deps)
    npm(["install"], p1, n1.url + "/npm/", work / "c1")
    npm(["install"], write_project(work / "p2", deps), n2.url + "/npm/", work / "c2")

    upstream.stop()  # connection refused from now on
    # node 3 never saw these packages: packuments from a peer's stored copy, tarballs from peers
    p3 = write_project(work / "p3", deps)
    npm(["install"], p3, n3.url + "/npm/", work / "c3")
    assert installed_tree(p3) == installed_tree(p1)
    assert "offline answer (npm): answering packument @beiran-test/scoped" in n3.log()
    assert "agreed by 2 peers" in n3.log()
    assert n3.api("GET", "/stats")["metrics"].get("beiran_fetch_bytes_total{source=origin}", 0) == 0
    # node 1 revalidates (metadata_ttl = 0) and serves its own last good copy, logged
    p1b = write_project(work / "p1b", deps)
    npm(["install"], p1b, n1.url + "/npm/", work / "c1b")
    assert installed_tree(p1b) == installed_tree(p1)
    assert "offline answer (npm): answering packument beiran-test-alpha (full) with the copy stored" in n1.log()
    status, headers, _ = n1.tcp("GET", f"/npm/{ALPHA}")
    assert status == 200 and "stale" in headers.get("Warning", "")
    # a package nobody has stored: a clear error, not a hang
    out = npm(["install", "beiran-test-p30"], write_project(work / "p4", {}), n2.url + "/npm/", work / "c4",
              check=False)
    assert out.returncode != 0 and "cannot connect to" in out.stderr, out.stderr

    # origin back: conditional requests, answered 304 Not Modified
    upstream.start()
    upstream.reset()
    p1c = write_project(work / "p1c", deps)
    npm(["install"], p1c, n1.url + "/npm/", work / "c1c")
    assert upstream.conditional >= 2 and upstream.statuses[304] >= 2, (upstream.requests, upstream.statuses)
    assert upstream.tarball_requests() == {}


def test_tampered_tarball_from_a_peer_is_never_stored_or_served(cluster, upstream, registry, work):
    """Must show 5: node 1 serves every blob with a flipped byte."""
    deps = {SCOPED: "^1.0.0", "beiran-test-p03": "^1.0.0", "beiran-test-p04": "^1.0.0"}
    bad = cluster.add(config={**npm_daemon_config(upstream.url), "testing": {"corrupt_serving": True}},
                      peers=None)
    p1 = write_project(work / "p1", deps)
    npm(["install"], p1, bad.url + "/npm/", work / "c1")  # alone: everything from the origin
    n2 = cluster.add(config=npm_daemon_config(upstream.url))
    cluster.wait_connected()
    wait_until(lambda: len(n2.api("GET", "/blobs?all=true")["blobs"]) >= 4, 10, what="node 2 sees node 1's blobs")

    # node 2: the only holder is the tampering peer -> its bytes fail verification, the origin serves
    p2 = write_project(work / "p2", deps)
    npm(["install"], p2, n2.url + "/npm/", work / "c2")
    assert installed_tree(p2) == installed_tree(p1)
    assert n2.metrics()["beiran_verification_failures_total"] >= 4
    stored = {b["digest"] for b in n2.api("GET", "/blobs")["blobs"]}
    assert stored and stored <= registry.digests()  # nothing but the published tarballs
    for pkg in lock_packages(p2).values():
        pub = registry.by_file()[pkg["resolved"].rsplit("/", 1)[1]]
        assert n2.blob(pub.digest) == pub.tarball

    # node 3 with the origin down: the tampering peer and a good one -> npm still succeeds
    upstream.stop()
    n3 = cluster.add(config=npm_daemon_config(upstream.url))
    cluster.wait_connected()
    p3 = write_project(work / "p3", deps)
    npm(["install"], p3, n3.url + "/npm/", work / "c3")
    assert installed_tree(p3) == installed_tree(p1)
    assert {b["digest"] for b in n3.api("GET", "/blobs")["blobs"]} <= registry.digests()
