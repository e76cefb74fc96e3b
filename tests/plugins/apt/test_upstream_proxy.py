"""The archive behind a corporate proxy (Debian's tinyproxy): a node's index and .deb downloads from
the archive go through it; the second node's .debs come from the first node, never through it."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from beiran_testkit.aptclient import add_nodes, client_for
from beiran_testkit.daemon import wait_until

pytestmark = pytest.mark.cluster


def _wait_announced(holder, node) -> None:
    """Until `node` knows every blob `holder` stores as complete there (not still downloading)."""
    held = {b["digest"] for b in holder.api("GET", "/blobs")["blobs"]}
    wait_until(lambda: held <= {b["digest"] for b in node.api("GET", "/blobs?all=true")["blobs"]
                                if b["nodes"].get(holder.uuid) == "complete"},
               15, what="the holder's blobs announced")


def _debs_through(tinyproxy) -> Counter[str]:
    return Counter(m.group(1) for r in tinyproxy.requests() if (m := re.match(r"GET http://\S+/([^/\s]+)\.deb ", r)))


def test_archive_requests_through_the_proxy_peer_debs_direct(cluster, repo, server, tinyproxy, tmp_path):
    n1, n2 = add_nodes(cluster, 2, repo, extra=[{"proxy": {"http": tinyproxy.url}}] * 2)
    want = repo.expected("hello", "libhello")
    c1 = client_for(tmp_path, "c1", n1, repo, server.url)
    c1.update()
    c1.download("hello")
    assert c1.debs() == want
    assert server.debs_served() == {name: 1 for name in want}
    assert sum(_debs_through(tinyproxy).values()) == len(want), tinyproxy.requests()
    assert any(r.startswith(f"GET {server.url}/") and "InRelease" in r for r in tinyproxy.requests())

    _wait_announced(n1, n2)
    c2 = client_for(tmp_path, "c2", n2, repo, server.url)
    c2.update()
    c2.download("hello")
    assert c2.debs() == want
    assert server.debs_served() == {name: 1 for name in want}, "node 2's .debs came from node 1"
    assert sum(_debs_through(tinyproxy).values()) == len(want)
    assert set(tinyproxy.upstreams()) == {server.url.split("//")[1]}, "the proxy opened only the archive"
    for node in (n1, n2):
        assert node.ip not in tinyproxy.log(), "peer traffic went through the proxy"
