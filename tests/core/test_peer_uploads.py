"""A cap on what peers make a node upload at once (`[limits] peer_uploads`): an attacker holding
uploads open by not reading them cannot take every one of a node's uploads, and the requester a cap
refuses gets 429 before any byte. A real daemon; the test is the peer (no cluster token)."""

from __future__ import annotations

import hashlib
import http.client
import socket
from urllib.parse import urlsplit

import pytest

from beiran_testkit.daemon import wait_until
from beiran_testkit.fixtures import random_blob

pytestmark = pytest.mark.cluster
MiB = 1 << 20


def _status_and_body(node, digest: str) -> tuple[int, bytes]:
    u = urlsplit(node.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    try:
        conn.request("GET", f"/blobs/{digest}")
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


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
        status, body = _status_and_body(node, digest)
        print(f"\nwith 2 stalled uploads held open, a third request: {status} {body[:120]!r}")
        assert status == 429 and b"too_many_requests" in body
        assert node.metrics()["beiran_peer_requests_refused_total{cap=uploads}"] == 1
    finally:
        for s in stalled:
            s.close()

    def served() -> bool:
        status, body = _status_and_body(node, digest)
        return status == 200 and hashlib.sha256(body).hexdigest() == digest.split(":")[1]
    wait_until(served, 30, what="the node to serve again once the stalled uploads went away")
