"""A tampering peer and a tarball too large to hold until verified (the gap in test_cluster's Must
show 5, whose tarballs all fit under `hold_bytes`).

Such a tarball is streamed to npm as it arrives, so the bad peer's bytes are on their way before its
sha512 can fail; the response then ends one chunk short. npm's fetch-retries never cover a body
that breaks off after the headers (a cut connection is a fatal ECONNRESET), but a body that fails
its integrity check is re-fetched once by npm itself, and by then the node has the verified blob.
So npm is run with the test kit's fetch-retries=0: its retry settings play no part.
"""

from __future__ import annotations

import hashlib
import http.client
import random
import urllib.error
import urllib.request

import pytest

from beiran_testkit.daemon import wait_until
from beiran_testkit.verdaccio import installed_tree, lock_packages, npm, npm_daemon_config, write_project

pytestmark = pytest.mark.cluster

NAME = "beiran-test-large-tamper"  # installed by npm
RAW = "beiran-test-large-tamper-raw"  # fetched by a plain HTTP client
HOLD = 256 << 10  # the nodes' hold_bytes: each tarball is 8 times that


def payload(seed: int) -> bytes:
    return random.Random(seed).randbytes(2 << 20)  # incompressible: the tarball is as large


def stored_files(node) -> dict[str, bytes]:
    """digest -> bytes of every blob file on the node's disk (whatever the index says)."""
    root = node.data_dir / "blobs"
    return {f"{f.parent.parent.name}:{f.name}": f.read_bytes()
            for alg in ("sha256", "sha512") for f in (root / alg).glob("*/*")}


def rehashes(digest: str, data: bytes) -> bool:
    alg, hex_ = digest.split(":", 1)
    return hashlib.new(alg, data).hexdigest() == hex_


def get_body(node, path: str) -> tuple[int, bytes]:
    """A plain client's GET: status and the body as received, even if the connection is cut."""
    try:
        with urllib.request.urlopen(node.url + path, timeout=120) as resp:
            status = resp.status
            try:
                return status, resp.read()
            except http.client.IncompleteRead as exc:
                return status, exc.partial
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def streamed_failures(node) -> int:
    return node.log().count("failed after streaming started")


def test_large_tampered_tarball_from_the_only_peer_npm_still_installs_the_published_bytes(
        cluster, upstream, registry, work):
    pub = registry.verdaccio.publish(NAME, "1.0.0", files={"blob.bin": payload(5)})
    raw = registry.verdaccio.publish(RAW, "1.0.0", files={"blob.bin": payload(6)})
    assert min(len(pub.tarball), len(raw.tarball)) > 8 * HOLD
    config = npm_daemon_config(upstream.url, hold_bytes=HOLD)
    # the tamperer flips the first byte of every blob it serves, at 1 MiB/s: node 2 starts reading
    # (and streaming to its client) long before the whole blob is in and fails verification
    bad = cluster.add(config={**config, "testing": {"corrupt_serving": True, "serve_rate": 1 << 20}},
                      peers=None)
    p1 = write_project(work / "p1", {NAME: "1.0.0", RAW: "1.0.0"})
    npm(["install"], p1, bad.url + "/npm/", work / "c1")  # alone: from the origin
    n2 = cluster.add(config=config)
    cluster.wait_connected()
    wait_until(lambda: {pub.digest, raw.digest} <= {b["digest"] for b in n2.api("GET", "/blobs?all=true")["blobs"]},
               20, what="node 2 sees that the tamperer holds both tarballs")
    failures_before = n2.metrics().get("beiran_verification_failures_total", 0)

    # a plain client: the streamed bad copy ends short, never complete; asking again gets the good one
    path = f"/npm/{RAW}/-/{RAW}-1.0.0.tgz"
    status, first = get_body(n2, path)
    assert status == 200
    assert len(first) < len(raw.tarball), f"a complete tarball reached the client, good: {first == raw.tarball}"
    assert streamed_failures(n2) == 1, n2.log()[-3000:]  # the large-tarball path, not the hold
    assert get_body(n2, path) == (200, raw.tarball)

    # npm: its first response ends short too, it retries by itself and installs the published bytes
    p2 = write_project(work / "p2", {NAME: "1.0.0"})
    out = npm(["install"], p2, n2.url + "/npm/", work / "c2")
    assert streamed_failures(n2) == 2, n2.log()[-3000:]
    m = n2.metrics()
    assert m["beiran_verification_failures_total"] >= failures_before + 2
    assert m["beiran_fetch_bytes_total{source=peer}"] >= len(pub.tarball) + len(raw.tarball)  # bad copies...
    assert m["beiran_fetch_bytes_total{source=origin}"] == len(pub.tarball) + len(raw.tarball)  # ...then each once
    (entry,) = lock_packages(p2).values()
    assert entry["integrity"] == pub.integrity, (entry, out.stderr[-2000:])
    hex_ = hashlib.sha512(pub.tarball).hexdigest()
    cached = work / "c2" / "_cacache" / "content-v2" / "sha512" / hex_[:2] / hex_[2:4] / hex_[4:]
    assert cached.read_bytes() == pub.tarball  # the tarball npm unpacked
    assert (p2 / "node_modules" / NAME / "blob.bin").read_bytes() == payload(5)
    tree = installed_tree(p2)
    assert tree and tree.items() <= installed_tree(p1).items()

    # node 2 never kept a bad byte: every blob file re-hashes to its digest, the index lists exactly
    # those, and no partial download is left behind
    files = stored_files(n2)
    assert {pub.digest, raw.digest} <= set(files)
    assert all(rehashes(d, data) for d, data in files.items()), sorted(files)
    assert {b["digest"] for b in n2.api("GET", "/blobs")["blobs"]} == set(files)
    assert not any((n2.data_dir / "blobs" / "tmp").iterdir())
