"""Must show 1-3: stock apt-get through each node's proxy; .debs cross from the origin once per
cluster; with the origin gone, a node that never saw the archive still updates and downloads."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from beiran_testkit.aptclient import add_nodes, beiran, client_for

pytestmark = pytest.mark.cluster


def test_second_node_gets_debs_from_the_first_and_all_survive_an_origin_outage(cluster, repo, server, tmp_path):
    n1, n2, n3 = add_nodes(cluster, 3, repo)
    want = repo.expected("hello", "libhello")

    # node 1: update + download a package with a dependency, from the origin
    c1 = client_for(tmp_path, "c1", n1, repo, server.url)
    c1.update()
    c1.download("hello")
    assert c1.debs() == want
    assert server.debs_served() == {name: 1 for name in want}
    # apt's next update is conditional, and the origin's 304 reaches apt as 304 ("Hit")
    out = c1.update().stdout
    assert "Hit:1" in out, out
    assert server.count("/InRelease", status=304) == 1

    # node 2: the same through its own proxy; the origin serves it no .deb (nor the by-hash Packages)
    c2 = client_for(tmp_path, "c2", n2, repo, server.url)
    c2.update()
    c2.download("hello")
    assert c2.debs() == want
    assert server.debs_served() == {name: 1 for name in want}
    assert server.count("/by-hash/SHA256/" + repo.packages_hash("Packages.xz")) == 1

    listed = json.loads(beiran(n2, "apt", "packages", "--all", "--json").stdout)
    by_name = {p["package"]: p for p in listed}
    assert set(by_name) == {"hello", "libhello"}
    assert {n1.uuid, n2.uuid} <= set(by_name["hello"]["nodes"])
    assert by_name["hello"]["digest"] == repo.packages["hello"].digest
    table = beiran(n2, "apt", "packages").stdout
    assert "hello" in table and "libhello" in table and "PACKAGE" in table

    # the origin goes away
    server.stop()
    # node 1 still updates from its own last good copy
    c1.update()
    # node 3 never talked to the origin: index files from a peer's copy (signature checked),
    # the by-hash Packages and the .debs from the cluster by digest
    c3 = client_for(tmp_path, "c3", n3, repo, server.url)
    c3.update()
    c3.download("hello")
    assert c3.debs() == want
    sources = json.loads(beiran(n3, "apt", "sources", "--json").stdout)
    assert sources[0]["key"] == f"{server.url}/debian/" and sources[0]["trust"] == "signed"
    assert sources[0]["packages"] == len(repo.packages)
    assert "signed" in beiran(n3, "apt", "sources").stdout


def test_four_nodes_download_twenty_packages_at_once_each_deb_leaves_the_origin_once(
        cluster, repo, server, tmp_path):
    nodes = add_nodes(cluster, 4, repo)
    clients = [client_for(tmp_path, f"c{i}", n, repo, server.url) for i, n in enumerate(nodes)]
    names = sorted(repo.packages)
    assert len(names) == 20
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda c: c.update(), clients))
        list(pool.map(lambda c: c.download(*names), clients))
    want = repo.expected(*names)
    for c in clients:
        assert c.debs() == want
    assert server.debs_served() == {name: 1 for name in want}
    # the by-hash Packages index is content-addressed: it crossed once too
    assert server.count("/by-hash/SHA256/" + repo.packages_hash("Packages.xz")) == 1
