"""Archives without by-hash (many third-party repositories): apt fetches Packages.xz by name, the
proxy checks it against the signed Release, learns the pool files from it, and .debs are still
shared through the cluster."""

from __future__ import annotations

import shutil

import pytest

from beiran_testkit.aptclient import add_nodes, client_for

pytestmark = pytest.mark.cluster


def test_archive_without_by_hash_is_learned_from_plain_indexes(cluster, repo, server, tmp_path):
    shutil.rmtree(repo.packages_dir / "by-hash", ignore_errors=True)
    repo.build(by_hash=False)
    want = repo.expected("hello", "libhello")
    n1, n2 = add_nodes(cluster, 2, repo)

    c1 = client_for(tmp_path, "c1", n1, repo, server.url)
    c1.update()
    c1.download("hello")
    assert c1.debs() == want
    assert server.count("Packages.xz") >= 1  # the index by its name, not by hash
    assert not [p for p in server.requests if "/by-hash/" in p]
    counters = n1.api("GET", "/apt/sources")["counters"]
    assert counters["indexes_used"] >= 1 and counters.get("indexes_rejected", 0) == 0, counters
    assert counters["debs_via_cluster"] == len(want), counters

    c2 = client_for(tmp_path, "c2", n2, repo, server.url)
    c2.update()
    c2.download("hello")
    assert c2.debs() == want
    assert server.debs_served() == {name: 1 for name in want}  # node 2's came from node 1
