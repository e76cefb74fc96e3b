"""What a node serves to peers while it is still downloading (issue 12, item 1, serving part): the
bytes of a download that has not verified go out only from a source that has not failed, and never
as a complete body. Real daemons; the test itself is the asking peer (no cluster token)."""

from __future__ import annotations

import hashlib
import http.client
import threading
from urllib.parse import urlsplit

import pytest

from beiran_testkit.daemon import wait_until
from beiran_testkit.fixtures import random_blob

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
MiB = 1 << 20


def _peer_get(node, digest: str) -> tuple[int, dict, bytes, bool]:
    """GET /blobs/<digest> as a peer: (status, headers, body, whether the body was complete)."""
    u = urlsplit(node.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    try:
        conn.request("GET", f"/blobs/{digest}")
        resp = conn.getresponse()
        try:
            body, complete = resp.read(), True
        except http.client.IncompleteRead as exc:
            body, complete = exc.partial, False
        return resp.status, dict(resp.getheaders()), body, complete
    finally:
        conn.close()


def _fetch_in_background(node, digest: str, size: int, source: dict) -> tuple[threading.Thread, dict]:
    result: dict = {}
    t = threading.Thread(target=lambda: result.update(node.fetch(digest, size, source)))
    t.start()
    return t, result


def test_download_from_a_tampering_node_never_reaches_a_peer_complete(cluster, origin):
    bad = cluster.add(config={"origins": {"o": origin.url},
                              "testing": {"corrupt_serving": True, "serve_rate": 4 * MiB}})
    n2 = cluster.add(config={"origins": {"o": origin.url}})
    cluster.wait_connected()
    data, digest = random_blob(8 * MiB, 21)
    origin.put("t", data)
    bad.add_blob(data)
    wait_until(lambda: any(b["digest"] == digest for b in n2.api("GET", "/blobs?all=true")["blobs"]), 10,
               what="n2 to learn the tampering node holds it")
    t, result = _fetch_in_background(n2, digest, len(data), {"plugin": "origin", "name": "o", "path": "/t"})
    wait_until(lambda: n2.metrics().get("beiran_fetch_bytes_total{source=peer}", 0) > MiB, 20,
               what="n2 to be downloading from the tampering node")
    status, headers, body, complete = _peer_get(n2, digest)
    t.join(60)
    assert status == 200 and headers["X-Beiran-State"] == "downloading"
    assert int(headers["Content-Length"]) == len(data)
    # every byte of it arrived, but it never verified: the body is cut short
    assert not complete and len(body) < len(data), f"a complete unverified body: {len(body)} bytes"
    assert body[1:] == data[1:len(body)] and body[:1] != data[:1]  # the tamperer's bytes, so far
    assert "error" not in result, result
    assert n2.blob(digest) == data and origin.requests["/t"] == 1
    assert n2.metrics()["beiran_verification_failures_total"] >= 1
    status, headers, body, complete = _peer_get(n2, digest)  # verified now: complete
    assert (status, headers["X-Beiran-State"], complete, hashlib.sha256(body).hexdigest()) == \
        (200, "complete", True, digest.split(":")[1])


def test_bytes_of_a_failed_source_are_not_served_to_peers_before_they_verify(cluster, origin):
    n1 = cluster.add(config={"origins": {"o": origin.url}, "testing": {"serve_rate": 4 * MiB}})
    n2 = cluster.add(config={"origins": {"o": origin.url}, "fetch": {"origin_delegation": False}})
    cluster.wait_connected()
    data, digest = random_blob(12 * MiB, 22)
    origin.put("f", data)
    origin.rate = 2 * MiB  # the rest comes slowly from the origin, so the download is still on
    n1.add_blob(data)
    wait_until(lambda: any(b["digest"] == digest for b in n2.api("GET", "/blobs?all=true")["blobs"]), 10,
               what="n2 to learn n1 holds it")
    t, result = _fetch_in_background(n2, digest, len(data), {"plugin": "origin", "name": "o", "path": "/f"})
    wait_until(lambda: n2.metrics().get("beiran_fetch_bytes_total{source=peer}", 0) > MiB, 20,
               what="n2 to be downloading from n1")
    n1.kill()  # the source fails part-way; its bytes stay in n2's download
    wait_until(lambda: n2.metrics().get("beiran_fetch_bytes_total{source=origin}", 0) > 0, 20,
               what="n2 to go on from the origin")
    status, _, body, _ = _peer_get(n2, digest)
    assert status == 404 and data[:4096] not in body
    t.join(60)
    assert "error" not in result, result
    status, _, body, complete = _peer_get(n2, digest)
    assert status == 200 and complete and body == data
