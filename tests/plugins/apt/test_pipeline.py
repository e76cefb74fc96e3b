"""apt pipelines its requests (up to 10 in flight on one connection); the proxy starts the cluster
fetches of the .debs already waiting behind the current one, so they download while it is sent."""

from __future__ import annotations

import pytest

from beiran_testkit.aptclient import add_nodes, client_for

pytestmark = pytest.mark.cluster


def test_pipelined_debs_are_fetched_ahead_and_delivered_intact(cluster, repo, server, tmp_path):
    names = sorted(repo.packages)
    assert len(names) >= 12
    want = repo.expected(*names)
    n1, n2 = add_nodes(cluster, 2, repo)
    c1 = client_for(tmp_path, "c1", n1, repo, server.url)
    c1.update()
    c1.download(*names)
    assert c1.debs() == want

    c2 = client_for(tmp_path, "c2", n2, repo, server.url)
    c2.update()
    c2.download(*names)
    assert c2.debs() == want
    counters = n2.api("GET", "/apt/sources")["counters"]
    # apt sent its requests pipelined, and node 2 fetched some of them before they were read
    assert counters.get("prefetched", 0) >= 1, counters
    assert counters["debs_via_cluster"] == len(want)
    # ahead or not, every .deb left the origin once (for node 1) and each is pinned on node 2
    assert server.debs_served() == {name: 1 for name in want}
    listed = {p["package"] for p in n2.api("GET", "/apt/packages")["packages"]}
    assert listed == set(names)

    # every .deb is stored and listed on node 2 now: a third apt-get gets each straight from the
    # store, with no fetch started for it (the fetcher counts a start for a stored blob as "local")
    c3 = client_for(tmp_path, "c3", n2, repo, server.url)
    c3.update()  # (its by-hash index is a stored blob too: counted before the .debs)
    local = n2.metrics().get("beiran_fetch_requests_total{source=local}", 0)
    c3.download(*names)
    assert c3.debs() == want
    assert n2.metrics().get("beiran_fetch_requests_total{source=local}", 0) == local
    after = n2.api("GET", "/apt/sources")["counters"]
    assert after["debs_via_cluster"] == 2 * len(want) and after.get("requests_before_stored", 0) == \
        counters.get("requests_before_stored", 0)
    assert server.debs_served() == {name: 1 for name in want}
