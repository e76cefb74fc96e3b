"""Exchange, more: a large blob comes in ranges from every complete holder; a caller that goes
away does not take the download (or the origin's single transfer) with it."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading

import pytest

from beiran_testkit.daemon import UnixHTTP, wait_until
from beiran_testkit.fixtures import random_blob

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
MiB = 1 << 20
SERVED = "beiran_served_bytes_total"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def holds(node, digest: str) -> bool:
    return any(b["digest"] == digest for b in node.api("GET", "/blobs")["blobs"])


def test_large_blob_comes_in_ranges_from_both_complete_holders(cluster, origin):
    piece = 2 * MiB
    cfg = {"origins": {"o": origin.url},
           "fetch": {"large_blob_threshold": 8 * MiB, "piece_size": piece}}
    n1, n2, n3 = cluster.start(3, config=cfg)
    data, digest = random_blob(24 * MiB, 11)
    origin.put("big", data)
    assert n1.add_blob(data) == digest
    assert n2.add_blob(data) == digest
    wait_until(lambda: next(b for b in n3.api("GET", "/blobs?all=true")["blobs"] if b["digest"] == digest)
               ["nodes"] == {n1.uuid: "complete", n2.uuid: "complete"}, 15,
               what="n3 to learn both n1 and n2 hold the blob complete")
    before = {n.name: n.metrics() for n in (n1, n2)}
    assert before["n1"].get(SERVED, 0) == 0 and before["n2"].get(SERVED, 0) == 0

    result = n3.fetch(digest, len(data), {"plugin": "origin", "name": "o", "path": "/big"}, timeout=180)
    assert "error" not in result, result
    assert result["sources"] == {"peer": len(data)}, result
    assert sha(n3.blob(digest)) == digest
    assert holds(n3, digest)

    # a holder counts what it served once its response is done: wait for both counters to settle
    def served() -> dict[str, float]:
        return {n.name: n.metrics().get(SERVED, 0) for n in (n1, n2)}
    wait_until(lambda: sum(served().values()) >= len(data), 20, what="served-bytes counters to settle")
    got = served()
    print(f"\nserved by holder: {got}")
    assert got["n1"] > 0 and got["n2"] > 0, got  # both holders served some of the ranges
    assert got["n1"] + got["n2"] == len(data), got  # and together exactly the blob, nothing twice
    assert got["n1"] % piece == 0 and got["n2"] % piece == 0, got  # whole pieces, no failures
    requests = sum(n.metrics()["beiran_served_requests_total"] for n in (n1, n2))
    assert requests == len(data) // piece  # one range request per piece
    m3 = n3.metrics()
    assert m3["beiran_fetch_bytes_total{source=peer}"] == len(data)
    assert m3.get("beiran_peer_failures_total", 0) == 0
    assert origin.requests["/big"] == 0 and origin.bytes["/big"] == 0
    # the pieces come on kept-alive connections, received on I/O threads like a single stream
    new = m3.get("beiran_peer_connections_total{connection=new}", 0)
    assert 2 <= new <= 4, m3  # one per holder (each asks for its pieces one after another)
    assert new + m3.get("beiran_peer_connections_total{connection=reused}", 0) == len(data) // piece, m3


def _start_cli_fetch(node, digest: str, size: int, source: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "beiran", "--socket", node.socket, "blobs", "fetch",
                             digest, "--size", str(size), "--source", json.dumps(source), "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("client", ["cli-killed", "api-closed"])
def test_caller_going_away_does_not_cancel_the_download(cluster, origin, client):
    n1, n2 = cluster.start(2, config={"origins": {"o": origin.url},
                                      "fetch": {"origin_delegation": False}})
    data, digest = random_blob(16 * MiB, 12)
    origin.put("slow", data)
    origin.rate = 4 * MiB  # ~4 s for the whole blob: the caller leaves well before the end
    src = {"plugin": "origin", "name": "o", "path": "/slow"}

    if client == "cli-killed":
        proc = _start_cli_fetch(n1, digest, len(data), src)
        try:
            wait_until(lambda: origin.bytes["/slow"] >= 2 * MiB, 60, what="the download to be under way")
            assert proc.poll() is None, "the CLI ended before it was killed"
        finally:
            proc.kill()
            proc.wait(10)
    else:
        conn = UnixHTTP(n1.socket, timeout=60)
        conn.request("POST", "/blobs?cmd=fetch", body=json.dumps({"digest": digest, "size": len(data),
                                                                  "source": src}).encode())
        resp = conn.getresponse()
        assert resp.status == 200
        first = json.loads(resp.readline())
        assert first["done"] is False
        wait_until(lambda: origin.bytes["/slow"] >= 2 * MiB, 60, what="the download to be under way")
        conn.sock.close()  # the client goes away mid-download, without reading the rest
        conn.close()

    # the caller is gone, the download is not: it is still running, not finished yet
    assert not holds(n1, digest)
    assert n1.api("GET", "/stats")["fetches_in_progress"] == 1
    assert origin.bytes["/slow"] < len(data)

    # a second client asks meanwhile: it joins the running download instead of starting another
    second = n1.fetch(digest, len(data), src, timeout=180)
    assert "error" not in second, second
    wait_until(lambda: holds(n1, digest), 60, what="the blob to be complete on n1")
    entry = next(b for b in n1.api("GET", "/blobs")["blobs"] if b["digest"] == digest)
    assert entry["size"] == len(data)
    assert sha(n1.blob(digest)) == digest
    assert n1.metrics()["beiran_fetch_bytes_total{source=origin}"] == len(data)
    # the origin sent the blob exactly once, in one request
    assert origin.requests["/slow"] == 1, origin.requests
    assert origin.bytes["/slow"] == len(data), origin.bytes
    # and the other node gets it from n1, not from the origin
    wait_until(lambda: any(b["digest"] == digest and b["nodes"] == {n1.uuid: "complete"}
                           for b in n2.api("GET", "/blobs?all=true")["blobs"]), 15,
               what="n2 to learn n1 holds the blob")
    result = n2.fetch(digest, len(data), src)
    assert "error" not in result and result["sources"] == {"peer": len(data)}, result
    assert origin.requests["/slow"] == 1


def test_second_client_joins_while_first_is_still_attached(cluster, origin):
    """Two callers at once, one leaves: the other still gets the blob, fetched from the origin once."""
    (n1,) = cluster.start(1, config={"origins": {"o": origin.url}})
    data, digest = random_blob(12 * MiB, 13)
    origin.put("s", data)
    origin.rate = 4 * MiB
    src = {"plugin": "origin", "name": "o", "path": "/s"}
    proc = _start_cli_fetch(n1, digest, len(data), src)
    result: dict = {}
    t = threading.Thread(target=lambda: result.update(n1.fetch(digest, len(data), src, timeout=180)))
    try:
        wait_until(lambda: origin.bytes["/s"] >= MiB, 60, what="the download to be under way")
        t.start()
        wait_until(lambda: origin.bytes["/s"] >= 3 * MiB, 60, what="more bytes")
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait(10)
    t.join(200)
    assert t.ident is not None and not t.is_alive()
    assert "error" not in result and result["done"], result
    assert sha(n1.blob(digest)) == digest
    assert origin.requests["/s"] == 1 and origin.bytes["/s"] == len(data)
