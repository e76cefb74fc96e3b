"""The npm upstream behind a corporate proxy (Debian's tinyproxy): packuments and tarballs from the
upstream go through it; the second node's tarballs come from the first node, never through it."""

from __future__ import annotations

import pytest

from beiran_testkit.daemon import wait_until
from beiran_testkit.verdaccio import ALPHA, SCOPED, installed_tree, npm, npm_daemon_config, write_project

pytestmark = pytest.mark.cluster


def _wait_announced(holder, node) -> None:
    """Until `node` knows every blob `holder` stores as complete there (not still downloading)."""
    held = {b["digest"] for b in holder.api("GET", "/blobs")["blobs"]}
    wait_until(lambda: held <= {b["digest"] for b in node.api("GET", "/blobs?all=true")["blobs"]
                                if b["nodes"].get(holder.uuid) == "complete"},
               15, what="the holder's blobs announced")


def _tarballs_through(tinyproxy) -> list[str]:
    return [r for r in tinyproxy.requests() if r.startswith("GET ") and ".tgz " in r]


def test_upstream_requests_through_the_proxy_peer_tarballs_direct(cluster, upstream, registry, tinyproxy, work):
    config = {**npm_daemon_config(upstream.url), "proxy": {"http": tinyproxy.url},
              "fetch": {"origin_delegation": False}}
    n1, n2 = cluster.start(2, config=config)
    deps = {SCOPED: "^1.0.0", ALPHA: "^2.0.0"}
    p1 = write_project(work / "p1", deps)
    npm(["install"], p1, n1.url + "/npm/", work / "c1")
    from_upstream = upstream.tarball_requests()
    assert from_upstream and set(from_upstream.values()) == {1}
    assert len(_tarballs_through(tinyproxy)) == sum(from_upstream.values()), tinyproxy.requests()
    assert any(f"GET {upstream.url}/" in r and ".tgz" not in r for r in tinyproxy.requests()), "packuments too"

    _wait_announced(n1, n2)
    p2 = write_project(work / "p2", deps)
    npm(["install"], p2, n2.url + "/npm/", work / "c2")
    assert installed_tree(p2) == installed_tree(p1)
    assert upstream.tarball_requests() == from_upstream, "node 2's tarballs came from node 1"
    assert len(_tarballs_through(tinyproxy)) == sum(from_upstream.values())
    assert set(tinyproxy.upstreams()) == {upstream.url.split("//")[1]}, "the proxy opened only the upstream"
    for node in (n1, n2):
        assert node.ip not in tinyproxy.log(), "peer traffic went through the proxy"
