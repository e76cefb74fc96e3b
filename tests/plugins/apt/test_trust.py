"""Trust without a signature: an unsigned archive is shared only when its URL is under
`trusted_sources` (like apt's [trusted=yes]); elsewhere its .debs pass through, never stored."""

from __future__ import annotations

import pytest

from beiran_testkit.aptclient import AptClient, add_nodes, proxy_of

pytestmark = pytest.mark.cluster


def test_unsigned_archive_is_shared_only_under_trusted_sources(cluster, repo, server, tmp_path):
    repo.build(sign=False)
    trusted = {"trusted_sources": [f"{server.url}/debian/"]}
    a, b, c = add_nodes(cluster, 3, repo, apt_extra=[trusted, trusted, {}])
    want = repo.expected("hello", "libhello")

    def client(node):
        return AptClient(tmp_path / f"apt-{node.name}", [repo.source_line(server.url, signed=False)],
                         proxy=proxy_of(node))

    for node in (a, b):
        cl = client(node)
        cl.update()
        cl.download("hello")
        assert cl.debs() == want
    assert server.debs_served() == {name: 1 for name in want}  # b got them from a
    assert {s["trust"] for s in b.api("GET", "/apt/sources")["sources"]} == {"trusted_sources"}

    cl = client(c)  # c does not trust the unsigned archive: straight from the origin, not stored
    cl.update()
    cl.download("hello")
    assert cl.debs() == want
    assert server.debs_served() == {name: 2 for name in want}
    assert c.api("GET", "/apt/packages")["packages"] == []
    assert c.api("GET", "/apt/sources")["counters"]["passthrough"] == 2
