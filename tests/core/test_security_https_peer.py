"""Red team on the pace rule for peers named by https:// URLs (`paced` in beiran/fetch/peer_source.py,
read on the event loop; the http:// path has its own, tested in test_security_fastpaths.py).

The node is told to trust a test CA (SSL_CERT_FILE) and has a peer at an https:// address: TLS in
front of a real daemon (beiran_testkit.tlsfront), which the node dials, syncs with and fetches from
as from any peer. The front answers some blob requests as an attacker would: a drip (a byte now and
then, always inside peer_timeout), a head that never comes, or a body that never ends. The node
must cut each (within a few peer_timeouts, not when the attacker stops; a flood at the blob's size,
its memory flat) and get the blob elsewhere, from an honest peer or the origin, its bytes verified;
an honest peer over TLS that sends slowly but above the floor is kept.

Found: nothing yet on this code; with `paced` taken out of `_receive_async` and `_piece` the drip
holds the fetch until the drip ends and a silent head for 35 s (the head timeout), and these fail."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import pytest

from beiran_testkit.daemon import Daemon, wait_until
from beiran_testkit.fixtures import random_blob
from beiran_testkit.hostilepeer import CLOSE, Step, asked_range, ok_head, range_head
from beiran_testkit.pki import make_ca, make_self_signed
from beiran_testkit.tlsfront import TlsFront

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
WINDOW = 1.0  # fetch.peer_timeout: the pace rule's window
#: how long a cut may take: a few windows (the rule cuts after one), far below the attack's length
BOUND = 8 * WINDOW
DRIP = 60.0  # seconds an attack goes on when nobody cuts it


def drip(data: bytes) -> Callable[[bytes], list[Step]]:
    """A right head (206 for a range) and then one right byte every 0.2 s: never idle for a
    peer_timeout, 5 bytes a second."""
    def answer(head: bytes) -> list[Step]:
        asked = asked_range(head)
        start, end = asked or (0, len(data))
        first = range_head(start, end, len(data)) if asked else ok_head(len(data))
        return [first, *(s for b in data[start:start + int(DRIP / 0.2)] for s in (bytes([b]), 0.2)), CLOSE]
    return answer


SILENT_HEAD: list[Step] = [DRIP, CLOSE]  # connected, TLS done, and never a byte of the answer


def _rss_mib(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def origin_source(name: str) -> dict:
    return {"plugin": "origin", "name": "o", "path": "/" + name}


def fetch_within(node: Daemon, digest: str, size: int, name: str, bound: float) -> dict:
    """The fetch's final line, asserted to come within `bound` seconds."""
    with ThreadPoolExecutor(1) as pool:
        fut = pool.submit(node.fetch, digest, size, origin_source(name), timeout=DRIP + 60)
        wait([fut], timeout=bound)
        assert fut.done(), f"{name}: the fetch was still held by the peer after {bound:.0f}s"
        return fut.result()


def test_an_https_peer_that_drips_or_keeps_its_head_is_cut_and_a_flowing_one_kept(cluster, origin, tmp_path: Path):
    ca, cert, key = make_ca(tmp_path / "pki")
    held = cluster.add(peers=None)  # behind the TLS front: the node knows it only as https://
    honest = cluster.add(peers=None)  # a plain http:// peer holding the large blob too
    front = TlsFront(held, cert, key)
    rogue = TlsFront(held, *make_self_signed(tmp_path / "rogue"))  # a certificate no trusted CA signed
    blobs = {"drip": random_blob(300 << 10, 1), "silent": random_blob(300 << 10, 2),
             "pieces": random_blob(2 << 20, 3), "flow": random_blob(3 << 19, 4),
             "flood": random_blob(300 << 10, 5)}
    for name, (data, _) in blobs.items():
        origin.put(name, data)
        held.add_blob(data)
    honest.add_blob(blobs["pieces"][0])
    front.answers[blobs["drip"][1]] = drip(blobs["drip"][0])
    front.answers[blobs["silent"][1]] = SILENT_HEAD
    front.answers[blobs["pieces"][1]] = drip(blobs["pieces"][0])
    # a body with no length that never ends, as fast as TLS goes: the node takes the announced size
    front.answers[blobs["flood"][1]] = [b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", *[b"\0" * (64 << 10)] * 1024]
    # 8x fetch.peer_min_rate (64 KiB/s; a busy machine may stall the sender a while): 3 s, three windows
    front.rate[blobs["flow"][1]] = 512 << 10
    node = cluster.add({"origins": {"o": origin.url},
                        "fetch": {"peer_timeout": WINDOW, "origin_delegation": False,
                                  "large_blob_threshold": 1 << 20, "piece_size": 256 << 10}},
                       peers=[front.url, honest.url, rogue.url], env={"SSL_CERT_FILE": str(ca)})
    try:
        wait_until(lambda: {held.uuid, honest.uuid} <= node.online_peers(), 20, what="both peers online")
        assert any(n["uuid"] == held.uuid and n["url"] == front.url for n in node.nodes()), node.nodes()
        # the operator sees why: the node lists it so, and says so once at WARNING
        rows = wait_until(lambda: [n for n in node.nodes(all=True) if n["url"] == rogue.url], 10,
                          what="the node to list the rogue certificate's address")
        assert rows[0]["status"] == "refused: certificate", rows
        assert f"peer {rogue.url} has a TLS certificate this node does not trust" in node.log()
        before = node.metrics()
        results = {}
        assert node.proc is not None
        rss = [_rss_mib(node.proc.pid)]
        for name in ("drip", "silent", "pieces", "flood"):  # the attacks
            data, digest = blobs[name]
            t0 = time.monotonic()
            results[name] = fetch_within(node, digest, len(data), name, BOUND)
            print(f"{name}: done in {time.monotonic() - t0:.1f}s: {results[name].get('sources')}")
            rss.append(_rss_mib(node.proc.pid))
        dripped = {name: front.sent[blobs[name][1]] for name in ("drip", "pieces")}
        time.sleep(1.0)  # a drip still read by the node sends 5 bytes more meanwhile
        dripped = {name: front.sent[blobs[name][1]] - n for name, n in dripped.items()}
        data, digest = blobs["flow"]
        results["flow"] = node.fetch(digest, len(data), origin_source("flow"), timeout=60)
        after = node.metrics()
    finally:
        front.stop()
        rogue.stop()
    assert rogue.handshakes == 0, "the node took a certificate no CA it trusts signed"
    for name, (data, digest) in blobs.items():
        assert results[name].get("done") and not results[name].get("error"), (name, results[name])
        assert node.blob(digest) == data, name
        assert front.asked[digest] >= 1, f"{name}: the node never asked the https peer"
    assert all(n <= 1 for n in dripped.values()), f"a drip's connection was not closed: {dripped}"
    # a drip or a silent head with the only holder: the blob came from the origin, once (from
    # where the drip was cut: its few bytes were right, and verified with the rest)
    assert results["drip"]["sources"].get("peer", 0) < 1000, results["drip"]
    assert results["silent"]["sources"] == {"origin": len(blobs["silent"][0])}
    assert origin.requests["/drip"] == 1 and origin.requests["/silent"] == 1
    # a dripping holder of a multi-peer fetch: its piece went to the honest peer, never the origin
    # (found so: the honest peer's stream over the hole took the whole-blob path, whose writer
    # already held the other pieces, and the fetch failed; a blob of 2 MiB or less, with
    # large_blob_threshold lowered to it)
    assert "origin" not in results["pieces"]["sources"], results["pieces"]
    assert origin.requests["/pieces"] == 0
    # slow but above the floor over TLS: kept to the end, the origin never asked
    assert results["flow"]["sources"] == {"peer": len(blobs["flow"][0])}
    assert origin.requests["/flow"] == 0
    failures = after["beiran_peer_failures_total"] - before.get("beiran_peer_failures_total", 0)
    assert failures == 4, failures
    # the flood: cut at the blob's size (what TLS and the socket buffers held is all it sent)
    assert front.sent[blobs["flood"][1]] < 16 << 20, front.sent[blobs["flood"][1]]
    assert max(rss) - rss[0] < 64, f"the node's memory grew from {rss[0]:.0f} to {max(rss):.0f} MiB"
    assert not list(node.data_dir.rglob("tmp/*"))
