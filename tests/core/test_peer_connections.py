"""Receiving from peers: small blobs reuse kept-alive connections (no TCP handshake per blob), and a
slow peer's bytes are seen as they arrive, not once a large buffer is full."""

from __future__ import annotations

import json

import pytest

from beiran_testkit.daemon import wait_until
from beiran_testkit.fixtures import random_blob

pytestmark = pytest.mark.cluster
KiB, MiB = 1 << 10, 1 << 20


def _visible(node, digests: set[str]) -> bool:
    return digests <= {b["digest"] for b in node.api("GET", "/blobs?all=true")["blobs"]}


def test_small_blobs_from_a_peer_reuse_kept_alive_connections(cluster):
    holder, receiver = cluster.start(2)
    blobs = [random_blob(64 * KiB + i, 100 + i) for i in range(12)]
    big, big_digest = random_blob(2 * MiB, 99)  # served with sendfile: that connection is not kept
    for data, _ in [*blobs, (big, big_digest)]:
        holder.add_blob(data)
    wait_until(lambda: _visible(receiver, {d for _, d in blobs} | {big_digest}), 10,
               what="the receiver to see the holder's blobs")
    for data, digest in [*blobs[:6], (big, big_digest), *blobs[6:]]:
        result = receiver.fetch(digest, len(data))
        assert "error" not in result and result["sources"] == {"peer": len(data)}, result
        assert receiver.blob(digest) == data
    m = receiver.metrics()
    new, reused = m.get("beiran_peer_connections_total{connection=new}", 0), m.get(
        "beiran_peer_connections_total{connection=reused}", 0)
    assert new + reused >= 13 and reused >= 10 and new <= 3, m


def test_a_slow_peers_bytes_show_as_they_arrive(cluster):
    size = 2 * MiB
    holder = cluster.add({"testing": {"serve_rate": MiB}})  # 1 MiB a second
    receiver = cluster.add()
    cluster.wait_connected()
    data, digest = random_blob(size, 7)
    holder.add_blob(data)
    wait_until(lambda: _visible(receiver, {digest}), 10, what="the receiver to see the holder's blob")
    _, _, payload = receiver.request("POST", "/blobs?cmd=fetch", {"digest": digest, "size": size}, timeout=60)
    lines = [json.loads(x) for x in payload.splitlines() if x.strip()]
    assert lines[-1]["bytes"] == size and "error" not in lines[-1], lines[-1]
    assert any(0 < line["bytes"] < size for line in lines), [line["bytes"] for line in lines]
    assert receiver.blob(digest) == data
