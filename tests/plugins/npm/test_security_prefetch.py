"""Red team on the opt-in tarball prefetch (beiran_plugins/npm/prefetch.py): it starts a download of
a served packument's latest tarball from a peer that says it holds it, bounded by
`prefetch_max_bytes` through the size that peer announced. A hostile peer announces a small size
and then sends far more: the node must take no more than the announced size before it gives the
peer up, and npm must still get the right tarball (from the upstream, asked once).

Found: the bound held, but npm's tarball answer was framed with the announced 1000 bytes and, once
the real 5319-byte tarball had verified, ended cleanly after 1000 of them (a complete-looking
truncated tarball; before the fetcher fix of the same stop the download failed outright)."""

from __future__ import annotations

import time

import pytest

from beiran_testkit.daemon import wait_until
from beiran_testkit.hostilepeer import HostileBlobPeer, as_holder, ok_head
from beiran_testkit.verdaccio import npm_daemon_config

pytestmark = pytest.mark.cluster
MiB = 1 << 20


def _counter(node, name: str) -> int:
    npm = next(p for p in node.api("GET", "/status")["plugins"] if p["name"] == "npm")
    return npm["counters"].get(name, 0)


def test_a_prefetch_takes_no_more_than_the_announced_size_from_a_lying_holder(cluster, upstream, registry):
    config = {**npm_daemon_config(upstream.url, prefetch_max_bytes=64 << 10),
              "fetch": {"origin_delegation": False, "peer_timeout": 3.0}}
    node = cluster.add(config, peers=None)
    held = registry.pub("beiran-test-p23", "1.0.0")
    peer = HostileBlobPeer(cluster.ip(7))
    peer.answers[held.digest] = [ok_head(32 * MiB)] + [b"j" * (64 << 10)] * 512

    def scenario() -> tuple[int, bytes]:
        status, _, _ = node.tcp("GET", "/npm/beiran-test-p23", headers={"Accept": "application/json"})
        assert status == 200
        wait_until(lambda: _counter(node, "tarballs_prefetched") == 1, 10, what="the prefetch to start")
        wait_until(lambda: peer.asked[held.digest] >= 1, 10, what="the lying holder to be asked")
        time.sleep(1.0)  # what the node takes, it takes now
        status, _, body = node.tcp("GET", f"/npm/beiran-test-p23/-/{held.file}")
        return status, body
    try:
        status, body = as_holder(node, peer, [[held.digest, "c", 1000]], scenario)
    finally:
        peer.stop()
    print(f"\nthe node took {peer.sent[held.digest] / MiB:.1f} MiB from a holder that announced 1000 bytes")
    assert status == 200 and body == held.tarball, (len(body), len(held.tarball))
    assert upstream.tarball_requests() == {f"/beiran-test-p23/-/{held.file}": 1}
    assert peer.sent[held.digest] < 16 * MiB  # kernel buffers take a few MiB before the node hangs up
