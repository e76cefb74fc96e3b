"""Exchange: blobs move between real daemons, verified, from the origin at most once per cluster."""

from __future__ import annotations

import hashlib
import json
import threading
import time

import pytest

from beiran_testkit.daemon import wait_until
from beiran_testkit.fixtures import random_blob

pytestmark = pytest.mark.cluster
MiB = 1 << 20


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.mark.slow
def test_static_peers_fetch_from_the_holder_not_the_origin(cluster, origin):
    n1, n2, n3 = cluster.start(3, config={"origins": {"o": origin.url}})
    data, digest = random_blob(64 * MiB, 1)
    origin.put("blob", data)
    assert n1.add_blob(data) == digest
    wait_until(lambda: n2.uuid and any(b["digest"] == digest for b in n3.api("GET", "/blobs?all=true")["blobs"]),
               10, what="availability to reach n3")
    src = {"plugin": "origin", "name": "o", "path": "/blob"}
    for node in (n2, n3):
        result = node.fetch(digest, len(data), src)
        assert "error" not in result, result
        assert node.blob(digest) == data
    assert origin.requests["/blob"] == 0
    m = n3.metrics()
    assert m["beiran_fetch_bytes_total{source=peer}"] == len(data)
    # /metrics speaks Prometheus text
    status, _, body = n3.tcp("GET", "/metrics")
    assert status == 200
    line = next(ln for ln in body.decode().splitlines() if ln.startswith('beiran_fetch_bytes_total{source="peer"}'))
    assert float(line.split()[-1]) == len(data)


@pytest.mark.slow
def test_eight_nodes_same_cold_blob_origin_serves_it_once(cluster, origin):
    nodes = cluster.start(8, config={"origins": {"o": origin.url}})
    data, digest = random_blob(64 * MiB, 2)
    origin.put("cold", data)
    origin.rate = 256 * MiB  # a WAN-ish origin, so the requests really overlap
    src = {"plugin": "origin", "name": "o", "path": "/cold"}
    results: dict[str, dict] = {}
    barrier = threading.Barrier(len(nodes))

    def go(node):
        barrier.wait()
        results[node.name] = node.fetch(digest, len(data), src, timeout=180)

    threads = [threading.Thread(target=go, args=(n,)) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(200)
    assert all("error" not in r for r in results.values()), results
    for node in nodes:
        assert sha(node.blob(digest)) == digest
    ratio = origin.bytes["/cold"] / len(data)
    print(f"\norigin bytes / blob size with 8 concurrent nodes: {ratio:.2f}")
    assert origin.requests["/cold"] == 1
    assert ratio == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("delegation", [True, False], ids=["via-owner", "origin-range"])
def test_holder_killed_mid_transfer_fetch_completes_elsewhere(cluster, origin, delegation):
    n1 = cluster.add(config={"origins": {"o": origin.url}, "testing": {"serve_rate": 16 * MiB}})
    n2 = cluster.add(config={"origins": {"o": origin.url}, "fetch": {"origin_delegation": delegation}})
    n3 = cluster.add(config={"origins": {"o": origin.url}})
    cluster.wait_connected()
    data, digest = random_blob(24 * MiB, 3)
    origin.put("b", data)
    n1.add_blob(data)
    wait_until(lambda: any(b["digest"] == digest for b in n2.api("GET", "/blobs?all=true")["blobs"]), 10,
               what="n2 to learn n1 holds the blob")
    result: dict = {}
    t = threading.Thread(target=lambda: result.update(
        n2.fetch(digest, len(data), {"plugin": "origin", "name": "o", "path": "/b"})))
    t.start()
    wait_until(lambda: n2.metrics().get("beiran_fetch_bytes_total{source=peer}", 0) > 4 * MiB, 20,
               what="transfer under way")
    n1.kill()
    t.join(60)
    assert "error" not in result, result
    assert sha(n2.blob(digest)) == digest
    assert "failed for" in n2.log() and "trying the next source" in n2.log()
    # resumed from the byte reached: nothing was downloaded twice
    assert sum(result["sources"].values()) == len(data), result["sources"]
    assert origin.bytes["/b"] <= len(data)
    n3_has_it = [b["digest"] for b in n3.api("GET", "/blobs")["blobs"]] == [digest]
    if delegation and n3_has_it:  # n3 was the blob's owner: it fetched it once, n2 continued from n3
        assert origin.bytes["/b"] == len(data) and not origin.ranges
    else:  # n2 went to the origin itself, with a Range from the byte reached
        assert 0 < origin.bytes["/b"] < len(data)
        assert origin.ranges and origin.ranges[0][1] != "bytes=0-"


@pytest.mark.slow
def test_tampering_node_is_skipped_and_its_bytes_never_stored(cluster, origin):
    bad = cluster.add(config={"origins": {"o": origin.url}, "testing": {"corrupt_serving": True}})
    n2 = cluster.add(config={"origins": {"o": origin.url}})
    n3 = cluster.add(config={"origins": {"o": origin.url}})
    cluster.wait_connected()
    data, digest = random_blob(3 * MiB, 4)
    origin.put("t", data)
    bad.add_blob(data)
    wait_until(lambda: any(b["digest"] == digest for b in n2.api("GET", "/blobs?all=true")["blobs"]), 10,
               what="n2 to learn the tampering node holds it")
    result = n2.fetch(digest, len(data), {"plugin": "origin", "name": "o", "path": "/t"})
    assert "error" not in result, result
    assert n2.blob(digest) == data
    assert n2.metrics()["beiran_verification_failures_total"] >= 1
    assert "failed verification" in n2.log()
    # n3 gets it verified too (from n2 or the origin, never the tamperer's bytes)
    result = n3.fetch(digest, len(data), {"plugin": "origin", "name": "o", "path": "/t"})
    assert "error" not in result and n3.blob(digest) == data
    assert origin.requests["/t"] <= 2


@pytest.mark.slow
def test_restarted_node_reannounces_and_is_online_again(cluster):
    n1, n2 = cluster.start(2)
    data, digest = random_blob(MiB, 5)
    n1.add_blob(data)
    wait_until(lambda: any(b["digest"] == digest for b in n2.api("GET", "/blobs?all=true")["blobs"]), 10,
               what="first announcement")
    n1.stop()
    wait_until(lambda: n1.uuid not in n2.online_peers(), 10, what="n1 offline on n2")
    assert not any(b["digest"] == digest for b in n2.api("GET", "/blobs?all=true")["blobs"])
    n1.start()
    wait_until(lambda: n1.uuid in n2.online_peers(), 15, what="n1 online again")
    wait_until(lambda: any(b["digest"] == digest and n1.uuid in b["nodes"]
                           for b in n2.api("GET", "/blobs?all=true")["blobs"]), 10, what="re-announcement")
    assert n2.fetch(digest, len(data))["sources"] == {"peer": len(data)}


@pytest.mark.slow
def test_ten_thousand_blobs_sync_in_a_handful_of_messages(cluster):
    n1 = cluster.add(peers=None, start=False)
    # write 10,000 small blobs straight into the store dir: the daemon verifies and adopts them at start
    expected = set()
    for i in range(10_000):
        data = f"blob {i}".encode()
        hexd = hashlib.sha256(data).hexdigest()
        path = n1.data_dir / "blobs" / "sha256" / hexd[:2]
        path.mkdir(parents=True, exist_ok=True)
        (path / hexd).write_bytes(data)
        expected.add("sha256:" + hexd)
    n1.start()
    assert len(n1.api("GET", "/blobs")["blobs"]) == 10_000
    start = time.monotonic()
    n2 = cluster.add(peers=[n1.url])
    wait_until(lambda: len(n2.api("GET", "/blobs?all=true")["blobs"]) >= 10_000, 20, what="10k blobs on n2")
    took = time.monotonic() - start
    seen = {b["digest"] for b in n2.api("GET", "/blobs?all=true")["blobs"]}
    assert expected <= seen
    counts = n2.api("GET", "/stats")["peer_messages"][n1.uuid]
    print(f"\n10k blobs synced in {took:.2f}s with messages {counts}")
    assert counts.get("snap", 0) + counts.get("delta", 0) <= 4


def test_cluster_token_required_and_wrong_token_never_syncs(cluster):
    good = {"cluster_token": "s3cret"}
    n1, n2 = cluster.start(2, config=good)
    data, digest = random_blob(MiB, 6)
    n1.add_blob(data)
    status, _, _ = n1.tcp("GET", f"/blobs/{digest}")
    assert status == 401
    status, _, _ = n1.tcp("GET", "/peer", headers={"Upgrade": "websocket", "Connection": "Upgrade",
                                                   "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                                                   "Sec-WebSocket-Version": "13"})
    assert status == 401
    wait_until(lambda: any(b["digest"] == digest for b in n2.api("GET", "/blobs?all=true")["blobs"]), 10,
               what="announcement between nodes sharing the token")
    assert n2.fetch(digest, len(data))["sources"] == {"peer": len(data)}
    intruder = cluster.add(config={"cluster_token": "wrong"}, peers=[n1.url, n2.url])
    wait_until(lambda: "wrong cluster token" in n1.log() and "wrong cluster token" in n2.log(), 15,
               what="the intruder's attempts to be refused")
    time.sleep(1)  # a retry or two more
    assert intruder.online_peers() == set()
    assert digest not in {b["digest"] for b in intruder.api("GET", "/blobs?all=true")["blobs"]}
    assert intruder.uuid not in n1.online_peers()
    result = intruder.fetch(digest, len(data))
    assert "error" in result
    assert n1.api("GET", "/ping")["pong"]


@pytest.mark.parametrize("bad", ["sha256:../../x", "sha256:..%2F..%2Fetc%2Fpasswd", "sha256:abc",
                                 "md5:" + "a" * 32, "sha256:" + "G" * 64, "sha512:" + "a" * 64, "x" * 300])
def test_bad_digests_are_400(cluster, bad):
    n1 = cluster.nodes[0] if cluster.nodes else cluster.add(peers=None)
    status, _, body = n1.tcp("GET", f"/blobs/{bad}")
    assert status == 400, (status, body)
    assert json.loads(body)["error"] == "invalid_digest"


def test_ranges_and_head(cluster):
    n1 = cluster.add(peers=None)
    data, digest = random_blob(3 * MiB, 7)
    n1.add_blob(data)
    status, headers, body = n1.tcp("GET", f"/blobs/{digest}", headers={"Range": "bytes=10-19"})
    assert status == 206 and body == data[10:20]
    assert headers["Content-Range"] == f"bytes 10-19/{len(data)}"
    status, headers, body = n1.tcp("GET", f"/blobs/{digest}", headers={"Range": "bytes=-5"})
    assert status == 206 and body == data[-5:]
    status, headers, body = n1.tcp("GET", f"/blobs/{digest}", headers={"Range": f"bytes={2 * MiB}-"})
    assert status == 206 and body == data[2 * MiB:]
    for bad in (f"bytes={len(data)}-", "bytes=5-2", "items=1-2", "bytes=1-2,4-5", "bytes=-"):
        status, _, _ = n1.tcp("GET", f"/blobs/{digest}", headers={"Range": bad})
        assert status == 416, bad
    status, headers, body = n1.tcp("HEAD", f"/blobs/{digest}")
    assert status == 200 and headers["Content-Length"] == str(len(data)) and body == b""
    assert headers["Accept-Ranges"] == "bytes" and headers["Docker-Content-Digest"] == digest
    status, _, _ = n1.tcp("GET", "/blobs/sha256:" + "0" * 64)
    assert status == 404
    status, _, body = n1.tcp("GET", f"/blobs/{digest}")
    assert status == 200 and body == data


def test_garbage_on_the_websocket_does_not_hurt(cluster):
    import asyncio

    from tornado.websocket import websocket_connect

    n1, n2 = cluster.start(2)

    async def talk():
        for junk in ["not json", "[]", '{"t": 5}', '{"t": "snap"}', '{"t": "hello", "uuid": "nope"}',
                     "x" * 100_000]:
            ws = await websocket_connect(n1.url.replace("http", "ws") + "/peer")
            await ws.read_message()  # their hello
            await ws.write_message(junk)
            assert await asyncio.wait_for(ws.read_message(), 5) is None  # closed on us
    asyncio.run(talk())
    assert n1.api("GET", "/ping")["pong"] and n2.uuid in n1.online_peers()
    assert "protocol error" in n1.log() or "bad message" in n1.log()


def test_blobs_cli_add_list_fetch_rm(cluster, tmp_path):
    import subprocess
    import sys

    n1, n2 = cluster.start(2)
    f = tmp_path / "file.bin"
    data, digest = random_blob(2 * MiB, 8)
    f.write_bytes(data)

    def cli(node, *args):
        return subprocess.run([sys.executable, "-m", "beiran", "--socket", node.socket, *args],
                              capture_output=True, text=True, timeout=120)

    out = cli(n1, "blobs", "add", str(f))
    assert out.returncode == 0 and out.stdout.strip() == digest
    wait_until(lambda: any(b["digest"] == digest for b in n2.api("GET", "/blobs?all=true")["blobs"]), 10,
               what="announce")
    out = cli(n2, "blobs", "fetch", digest, "-o", str(tmp_path / "out.bin"))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "out.bin").read_bytes() == data
    out = cli(n2, "blobs", "list", "--json")
    assert [b["digest"] for b in json.loads(out.stdout)] == [digest]
    out = cli(n2, "blobs", "rm", digest)
    assert out.returncode == 0
    out = cli(n2, "blobs", "rm", digest)
    assert out.returncode == 1 and "not stored" in out.stderr and "Traceback" not in out.stderr
    out = cli(n2, "blobs", "fetch", "sha256:nothex")
    assert out.returncode == 1 and "digest" in out.stderr
    out = cli(n2, "stats", "--json")
    assert json.loads(out.stdout)["metrics"]["beiran_fetch_bytes_total{source=peer}"] == len(data)


def test_blobs_add_stores_what_a_reader_gets_from_a_pipe_or_proc_file(cluster, tmp_path):
    """`stat` says 0 bytes for a /proc file and a pipe: what is stored is their contents."""
    import os
    import subprocess
    import sys

    (n1,) = cluster.start(1)
    proc_file = "/proc/version"  # the same text for every reader
    with open(proc_file, "rb") as fh:
        expected = {proc_file: fh.read()}
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    expected[str(fifo)] = random_blob(3 * MiB + 5, 9)[0]

    def feed() -> None:
        with open(fifo, "wb") as fh:
            fh.write(expected[str(fifo)])
    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    out = subprocess.run([sys.executable, "-m", "beiran", "--socket", n1.socket, "blobs", "add", proc_file,
                          str(fifo)], capture_output=True, text=True, timeout=120)
    writer.join(10)
    assert out.returncode == 0, out.stderr
    digests = out.stdout.split()
    for (path, data), digest in zip(expected.items(), digests, strict=True):
        assert data, path
        assert digest == "sha256:" + hashlib.sha256(data).hexdigest(), path
        assert n1.blob(digest) == data, path
