"""A cap on what peers make a node upload at once (`[limits] peer_uploads`): an attacker holding
uploads open by not reading them cannot take every one of a node's uploads, and the requester a cap
refuses gets 429 before any byte. A real daemon; the test is the peer (no cluster token)."""

from __future__ import annotations

import hashlib
import socket
import threading
from urllib.parse import urlsplit

import pytest

from beiran_testkit.daemon import wait_until
from beiran_testkit.fixtures import random_blob

pytestmark = pytest.mark.cluster
MiB = 1 << 20


def _stalled_download(node, digest: str) -> socket.socket:
    """Ask for the blob and read only the first bytes: the node's send fills the socket buffers and
    waits, holding its upload."""
    u = urlsplit(node.url)
    sock = socket.create_connection((u.hostname, u.port), timeout=30)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    sock.sendall(f"GET /blobs/{digest} HTTP/1.1\r\nHost: {u.hostname}\r\n\r\n".encode())
    first = sock.recv(4096)
    assert first.startswith(b"HTTP/1.1 200"), first[:200]
    return sock


def test_uploads_to_peers_are_capped_and_a_refused_peer_gets_429_before_any_byte(cluster):
    node = cluster.add(peers=None, config={"limits": {"peer_uploads": 2}})
    data, digest = random_blob(64 * MiB, 5)
    node.add_blob(data)
    stalled = [_stalled_download(node, digest) for _ in range(2)]
    try:
        status, body = node.peer_get(f"/blobs/{digest}", timeout=60)
        print(f"\nwith 2 stalled uploads held open, a third request: {status} {body[:120]!r}")
        assert status == 429 and b"too_many_requests" in body
        assert node.metrics()["beiran_peer_requests_refused_total{cap=uploads}"] == 1
    finally:
        for s in stalled:
            s.close()

    def served() -> bool:
        status, body = node.peer_get(f"/blobs/{digest}", timeout=60)
        return status == 200 and hashlib.sha256(body).hexdigest() == digest.split(":")[1]
    wait_until(served, 30, what="the node to serve again once the stalled uploads went away")


def test_a_requester_refused_by_a_busy_holder_waits_for_it_instead_of_going_to_the_origin(cluster, origin):
    holder = cluster.add(config={"origins": {"o": origin.url}, "limits": {"peer_uploads": 1}})
    requester = cluster.add(config={"origins": {"o": origin.url}, "fetch": {"origin_delegation": False}})
    cluster.wait_connected()
    data, digest = random_blob(64 * MiB, 6)
    origin.put("d", data)
    holder.add_blob(data)
    wait_until(lambda: any(b["digest"] == digest for b in requester.api("GET", "/blobs?all=true")["blobs"]), 10,
               what="the requester to learn the holder has it")
    stalled = _stalled_download(holder, digest)  # the holder's one upload, held by someone else
    result: dict = {}
    t = threading.Thread(target=lambda: result.update(
        requester.fetch(digest, len(data), {"plugin": "origin", "name": "o", "path": "/d"})))
    t.start()
    try:
        wait_until(lambda: holder.metrics().get("beiran_peer_requests_refused_total{cap=uploads}", 0) >= 1, 20,
                   what="the requester to be refused by the busy holder")
    finally:
        stalled.close()  # the upload slot frees: the requester, pausing, comes back
    t.join(120)
    m = requester.metrics()
    print(f"\nrequester: {result.get('state')}; bytes from peer {m.get('beiran_fetch_bytes_total{source=peer}', 0)}, "
          f"origin requests {origin.requests['/d']}, peer failures {m.get('beiran_peer_failures_total', 0)}")
    assert "error" not in result, result
    assert origin.requests["/d"] == 0
    assert m.get("beiran_peer_failures_total", 0) == 0
    assert hashlib.sha256(requester.blob(digest)).hexdigest() == digest.split(":")[1]
