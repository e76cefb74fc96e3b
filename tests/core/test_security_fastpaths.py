"""Red team on stop 13's fast paths (whole-blob receive, the peer answer parser): a hostile peer
that holds (says it holds) a blob answers a real daemon's blob request with a lying head, too many
or too few bytes, the wrong bytes, a stall or a cut. Whatever it sends, the node's own client must
get the right bytes from the origin, asked once; nothing unverified is stored; no temp file stays.

The tests that found a weakness say so in their docstring (they failed on the code before the fix);
the others cover attacks that already failed safely and had no test."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

import pytest

from beiran_testkit.daemon import Daemon, wait_until
from beiran_testkit.fakepeer import RPCPeer
from beiran_testkit.fixtures import random_blob
from beiran_testkit.hostilepeer import (
    CLOSE,
    HostileBlobPeer,
    ScriptedOrigin,
    as_holder,
    asked_range,
    ok_head,
    range_head,
)

pytestmark = pytest.mark.cluster
CONFIG = {"fetch": {"peer_timeout": 3.0, "origin_delegation": False}}


def temp_files(node: Daemon) -> list[str]:
    return [str(p) for p in node.data_dir.rglob("tmp/*")]


def fetch_each(node: Daemon, origin: Any, blobs: dict[str, tuple[bytes, str]]) -> dict[str, dict]:
    """Fetch every blob with no size given (as npm's tarballs are) and its origin as the source."""
    return {name: node.fetch(digest, None, {"plugin": "origin", "name": "o", "path": "/" + name}, timeout=60)
            for name, (_, digest) in blobs.items()}


def check_from_origin_once(node: Daemon, origin: Any, blobs: dict[str, tuple[bytes, str]],
                           results: dict[str, dict]) -> None:
    failed = {name: r.get("error") or r for name, r in results.items() if r.get("error") or not r.get("done")}
    assert not failed, f"fetches failed although the origin has the blobs: {failed}"
    for name, (data, digest) in blobs.items():
        assert node.blob(digest) == data, name
        assert origin.requests["/" + name] == 1, (name, dict(origin.requests))
    assert temp_files(node) == []


def test_a_head_the_parser_chokes_on_is_that_peers_failure_not_the_fetchs(cluster, origin):
    """Found: a Content-Length or status code of Latin-1 digits (b"\\xb2" is '²', and '²'.isdigit()
    is True) passed the parser's check and then failed int() with a ValueError, which no layer
    took for a peer's fault: the whole fetch failed instead of going on to the origin. So one
    peer announcing a blob could make every node's fetch of it fail."""
    node = cluster.add({"origins": {"o": origin.url}, **CONFIG}, peers=None)
    peer = HostileBlobPeer(cluster.ip(7))
    answers = {
        "cl": [b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\nxx", CLOSE],
        "cl2": [b"HTTP/1.1 200 OK\r\nContent-Length: 1\xb9\r\n\r\n" + b"x" * 11, CLOSE],
        "status": [b"HTTP/1.1 2\xb20 OK\r\nContent-Length: 2\r\n\r\nxx", CLOSE],
    }
    blobs = {name: random_blob(4000 + i, 300 + i) for i, name in enumerate(answers)}
    for name, (data, digest) in blobs.items():
        origin.put(name, data)
        peer.answers[digest] = answers[name]
    try:
        results = as_holder(node, peer, [[d, "c", len(b)] for b, d in blobs.values()],
                            lambda: fetch_each(node, origin, blobs))
    finally:
        peer.stop()
    assert all(peer.asked[d] >= 1 for _, d in blobs.values()), peer.asked  # the attack was tried
    check_from_origin_once(node, origin, blobs, results)
    assert "ValueError" not in node.log()


def test_a_third_peers_size_claim_never_fails_a_fetch_the_origin_can_serve(cluster, origin):
    """Found: a fetch given no size (npm's tarballs) took the size a holder announced, or the
    Content-Length of the peer it read from, and kept it for every later source: the origin's right
    bytes then failed as "more bytes than its size" (or "sent 5000 of 100000 bytes"), and a claim
    larger than the disk's room failed the fetch before any source was asked. A peer's claim
    bounds what that peer may send, never what the origin may."""
    node = cluster.add({"origins": {"o": origin.url}, **CONFIG}, peers=None)
    peer = HostileBlobPeer(cluster.ip(7))
    blobs = {name: random_blob(5000, 400 + i) for i, name in enumerate(("small", "large", "huge", "cl"))}
    claims = {"small": 100, "large": 100_000, "huge": 1 << 49, "cl": None}
    for name, (data, digest) in blobs.items():
        origin.put(name, data)
        # the claimed holder has nothing to send (404), except "cl": it sends 100 wrong bytes
        peer.answers[digest] = [ok_head(100) + b"z" * 100] if name == "cl" else None  # type: ignore[assignment]
    try:
        results = as_holder(node, peer, [[d, "c", claims[n]] for n, (_, d) in blobs.items()],
                            lambda: fetch_each(node, origin, blobs))
    finally:
        peer.stop()
    check_from_origin_once(node, origin, blobs, results)


def test_whole_blob_lies_fail_over_to_the_origin_and_leave_nothing(cluster, origin):
    """Already safe (no test covered it): on the whole-blob path (a blob of known size <= 2 MiB,
    read whole on a receive thread) a peer that sends more than the size, fewer, the right count of
    another blob's bytes, a cut body, a head and nothing more, or a part and then silence (past
    peer_timeout) costs the node's client nothing:
    the blob comes from the origin verified, no temp file or unverified file stays, and each lie
    counts as a peer failure. A right prefix and a cut is resumed from the origin (one request for
    the rest); a wrong prefix costs the origin one request more (the rest, then the whole)."""
    node = cluster.add({"origins": {"o": origin.url}, **CONFIG}, peers=None)
    peer = HostileBlobPeer(cluster.ip(7))
    n = 300_000
    other, _ = random_blob(n, 999)
    blobs = {name: random_blob(n, 500 + i)
             for i, name in enumerate(("more", "fewer", "other", "cut", "head", "stall"))}
    answers = {
        "more": lambda data: [ok_head(n + 100) + data + b"y" * 100],
        "fewer": lambda data: [ok_head(n - 100) + other[:n - 100], CLOSE],
        "other": lambda data: [ok_head(n) + other],
        "cut": lambda data: [ok_head(n) + data[:n // 2], 0.2, CLOSE],
        "head": lambda data: [ok_head(n), CLOSE],
        "stall": lambda data: [ok_head(n) + data[:n // 3]],  # then silence, the connection open
    }
    for name, (data, digest) in blobs.items():
        origin.put(name, data)
        peer.answers[digest] = answers[name](data)
    before = node.metrics()

    def fetch_all() -> dict[str, dict]:
        return {name: node.fetch(digest, n, {"plugin": "origin", "name": "o", "path": "/" + name}, timeout=60)
                for name, (_, digest) in blobs.items()}
    try:
        results = as_holder(node, peer, [[d, "c", n] for _, d in blobs.values()], fetch_all)
    finally:
        peer.stop()
    after = node.metrics()
    assert all(peer.asked[d] == 1 for _, d in blobs.values()), peer.asked
    failed = {k: r for k, r in results.items() if r.get("error") or not r.get("done")}
    assert not failed, failed
    for name, (data, digest) in blobs.items():
        assert node.blob(digest) == data, name
        assert node.tcp("GET", f"/blobs/{digest}")[2] == data, name
    asked = {name: origin.requests["/" + name] for name in blobs}
    print(f"\norigin requests per blob: {asked}; origin bytes {dict(origin.bytes)}")
    assert asked == {"more": 1, "fewer": 2, "other": 1, "cut": 1, "head": 1, "stall": 1}, asked
    assert origin.bytes["/cut"] == n - n // 2  # resumed where the right prefix ended
    assert origin.bytes["/stall"] == n - n // 3
    assert temp_files(node) == []
    # "other" and the wrong prefix of "fewer" fail verification; "more" (refused before a byte of it
    # was written), "fewer", "cut", "head" and "stall" are transfers that failed part-way
    assert after["beiran_verification_failures_total"] - before.get("beiran_verification_failures_total", 0) == 2
    assert after["beiran_peer_failures_total"] - before.get("beiran_peer_failures_total", 0) == 5


@pytest.mark.slow
def test_a_peer_dripping_its_answer_is_given_up_for_the_origin(cluster, origin):
    """Found: 32 such transfers (the receive pool) stall every peer fetch of the node. Without a
    bound the fetch below ends only when the drip does (about 2000 s); it is given 8x peer_timeout
    here. Now each transfer, its head included, must average `fetch.peer_min_rate` over every
    peer_timeout: the drip is cut (its connection closed, so the receive thread is free), counted
    as that peer's failure, and the blob comes from the origin."""
    node = cluster.add({"origins": {"o": origin.url}, "fetch": {"peer_timeout": 1.0, "origin_delegation": False}},
                       peers=None)
    peer = HostileBlobPeer(cluster.ip(7))
    data, digest = random_blob(4000, 600)
    origin.put("drip", data)
    peer.answers[digest] = [ok_head(len(data))] + [step for b in data for step in (bytes([b]), 0.5)]
    pool = ThreadPoolExecutor(1)
    before = node.metrics()

    def held() -> tuple[bool, int]:
        fetch = pool.submit(node.fetch, digest, len(data), {"plugin": "origin", "name": "o", "path": "/drip"})
        wait([fetch], timeout=8.0)
        sent = peer.sent[digest]
        time.sleep(2.0)  # a drip still read by a receive thread sends 4 bytes more meanwhile
        return not fetch.done(), peer.sent[digest] - sent
    try:
        still_held, dripped_after = as_holder(node, peer, [[digest, "c", len(data)]], held)
    finally:
        peer.stop()  # the drip ends: a held fetch goes on to the origin and the pool's thread ends
        pool.shutdown()
    assert not still_held, "the fetch was still held by the dripping peer after 8x peer_timeout"
    assert dripped_after <= 1, f"the peer's connection was not closed: it sent {dripped_after} bytes after"
    result = node.fetch(digest, len(data))
    assert result.get("done") and not result.get("error"), result
    assert node.blob(digest) == data
    assert origin.requests["/drip"] >= 1
    after = node.metrics()
    assert after["beiran_peer_failures_total"] - before.get("beiran_peer_failures_total", 0) == 1


def test_latin1_digits_in_a_signed_header_are_refused_as_malformed(cluster):
    """Found: X-Beiran-Auth's ts of Latin-1 digits ('²') passed `isdigit()` and failed `int()`:
    an unauthenticated request got a 500 and left a traceback in the log (as many as it liked)
    instead of the 401 every other malformed proof gets."""
    node = cluster.add({"cluster_token": "s3cret"}, peers=None)
    me = "00000000-0000-4000-8000-000000000002"
    header = f"uuid={me},ts=1\u00b2,nonce={'a' * 32},sig={'0' * 64}"
    for path in ("/blobs/sha256:" + "0" * 64, "/peer"):
        req = f"GET {path} HTTP/1.1\r\nHost: x\r\nX-Beiran-Auth: {header}\r\nConnection: close\r\n\r\n"
        with socket.create_connection((node.ip, node.port), timeout=10) as s:
            s.sendall(req.encode("latin-1"))
            head = s.recv(4096)
        assert head.startswith(b"HTTP/1.1 401"), (path, head[:200])
    assert "Traceback" not in node.log()


def test_a_peer_cannot_write_more_than_the_store_holds_for_a_blob_of_unknown_size(cluster, origin):
    """Found: a blob fetched with no size (npm's tarballs) took as many bytes as the peer's
    Content-Length said (or a body without one sent) into its temp file, past store.max_size and up
    to a full disk, before verification failed: no cap applied to a size nobody this node trusts
    gave. Now a peer's Content-Length (or the size another peer announced) must fit under
    `fetch.max_unknown_size`, store.max_size and the free disk, and a body without one is cut there;
    the peer is given up and the blob comes from the origin."""
    mib = 1 << 20
    node = cluster.add({"origins": {"o": origin.url}, "store": {"max_size": 4 * mib}, **CONFIG}, peers=None)
    peer = HostileBlobPeer(cluster.ip(7))
    junk = b"j" * mib
    answers: dict[str, list] = {
        "length": [ok_head(48 * mib)] + [junk] * 48,
        "until-close": [b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"] + [junk] * 48 + [CLOSE],
        "chunked": [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"]
        + [b"%x\r\n" % mib + junk + b"\r\n"] * 48 + [b"0\r\n\r\n"],
        "announced": [ok_head(48 * mib)] + [junk] * 48,  # its holder announced 48 MiB as well
    }
    blobs = {name: random_blob(5000, 700 + i) for i, name in enumerate(answers)}
    for name, (data, digest) in blobs.items():
        origin.put(name, data)
        peer.answers[digest] = answers[name]
    holdings = [[d, "c", 48 * mib if name == "announced" else None] for name, (_, d) in blobs.items()]
    try:
        results = as_holder(node, peer, holdings, lambda: fetch_each(node, origin, blobs))
    finally:
        peer.stop()
    took = {name: round(peer.sent[d] / mib, 1) for name, (_, d) in blobs.items()}
    print(f"\nMiB of junk the node took for a blob of unknown size in a store of 4 MiB: {took}")
    assert all(peer.asked[d] >= 1 for name, (_, d) in blobs.items() if name != "announced"), peer.asked
    check_from_origin_once(node, origin, blobs, results)
    # the store's 4 MiB, a batch, and what the sockets' buffers took before the connection closed
    assert all(mib_taken < 20 for mib_taken in took.values()), took


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\nxx",  # Latin-1 digits (found: a ValueError)
    b"HTTP/1.1 2\xb20 OK\r\nContent-Length: 2\r\n\r\nxx",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n folded: value\r\n\r\nxx",  # obs-fold
    b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nxx",  # space before the colon
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\x00\r\n\r\nxx",  # NUL in the value
    b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nxx",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nxx",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
    b"HTTP/1.1  200 OK\r\nContent-Length: 2\r\n\r\nxx",
    b"HTTP/1.1 200 OK\rContent-Length: 2\r\r\rxx" + b"x" * 70000,  # bare CR: one endless line
])
def test_hostile_heads_are_refused_as_http_errors(raw):
    """What a hostile peer might send for a head is refused with an HTTPException (the receive path
    takes those for the peer's failure), never any other exception. The first two were found
    (ValueError); the others were already refused and untested."""
    import http.client

    from beiran.fetch.peer_response import PeerResponse

    a, b = socket.socketpair()
    try:
        a.sendall(raw)
        a.shutdown(socket.SHUT_WR)
        with pytest.raises(http.client.HTTPException):
            PeerResponse(b, method="GET").begin()
    finally:
        a.close()
        b.close()


def test_an_origins_extra_bytes_or_interim_answers_are_never_read_as_the_next_answer(cluster):
    """Already safe (untested with a daemon): on a kept-alive origin connection, bytes after a
    body (a whole forged answer, at once or a moment later) and a 103 before the answer are never
    taken for the next request's answer: every blob arrives right, and a connection with bytes
    nobody asked for is not used again."""
    origin = ScriptedOrigin("127.0.0.1")
    node = cluster.add({"origins": {"o": origin.url}, **CONFIG}, peers=None)
    blobs = {name: random_blob(3000 + i, 800 + i) for i, name in
             enumerate(("glued", "after-glued", "late", "after-late", "early"))}

    def forged(name: str) -> bytes:
        return ok_head(len(blobs[name][0])) + b"F" * len(blobs[name][0])
    origin.answers = {
        "/glued": [ok_head(len(blobs["glued"][0])) + blobs["glued"][0] + forged("after-glued")],
        "/after-glued": [ok_head(len(blobs["after-glued"][0])) + blobs["after-glued"][0]],
        "/late": [ok_head(len(blobs["late"][0])) + blobs["late"][0], 0.3, forged("after-late")],
        "/after-late": [ok_head(len(blobs["after-late"][0])) + blobs["after-late"][0]],
        "/early": [b"HTTP/1.1 103 Early Hints\r\nLink: </x>; rel=preload\r\n\r\n"
                   + ok_head(len(blobs["early"][0])) + blobs["early"][0]],
    }
    results = {}
    try:
        for name, (data, digest) in blobs.items():
            if name == "after-late":
                time.sleep(0.6)  # the forged answer has arrived on the idle connection by now
            results[name] = node.fetch(digest, len(data), {"plugin": "origin", "name": "o", "path": "/" + name})
    finally:
        origin.stop()
    print(f"\nresults: { {k: r.get('error') or 'ok' for k, r in results.items()} }, "
          f"{origin.connections} connections for {sum(origin.asked.values())} requests")
    for name, (data, digest) in blobs.items():
        assert not results[name].get("error"), (name, results[name])
        assert node.blob(digest) == data, name
    assert all(origin.asked["/" + n] == 1 for n in blobs), origin.asked
    assert origin.connections >= 3  # neither connection that carried unasked bytes was used again


def test_one_lying_holder_in_a_multi_peer_fetch_does_not_send_the_node_to_the_origin(cluster, origin):
    """Found: a multi-peer fetch has no per-piece check, and when the whole failed verification
    every contributor was skipped for the blob, so one peer answering its ranges with junk sent the
    node to the origin although an honest peer held the blob (and blamed that peer). Now the fetch
    then takes the blob whole from one holder at a time: the honest one serves it, the liar alone
    is skipped."""
    config = {"origins": {"o": origin.url},
              "fetch": {"peer_timeout": 3.0, "origin_delegation": False, "large_blob_threshold": 1 << 20,
                        "piece_size": 256 << 10}}
    n1, n2 = cluster.start(2, config=config)
    data, digest = random_blob(4 << 20, 900)
    origin.put("large", data)
    n2.add_blob(data)
    wait_until(lambda: any(b["digest"] == digest and b["nodes"].get(n2.uuid) == "complete"
                           for b in n1.api("GET", "/blobs?all=true")["blobs"]), 10, what="n2's blob announced")
    peer = HostileBlobPeer(cluster.ip(7))
    peer.answers[digest] = junk_answer(len(data))
    try:
        result = as_holder(n1, peer, [[digest, "c", len(data)]],
                           lambda: n1.fetch(digest, len(data), {"plugin": "origin", "name": "o", "path": "/large"}))
    finally:
        peer.stop()
    assert peer.asked[digest] >= 1  # the liar got pieces
    assert result.get("done") and not result.get("error"), result
    assert n1.blob(digest) == data
    assert origin.requests["/large"] == 0, "the origin was asked for a blob an honest peer holds"


def junk_answer(size: int) -> Callable[[bytes], list]:
    """A liar's answer to any request for a blob of `size` bytes: the range (or the whole) asked
    for, of junk."""
    def answer(head: bytes) -> list:
        rng = next((line for line in head.split(b"\r\n") if line.lower().startswith(b"range:")), None)
        if rng is None:
            return [ok_head(size) + b"j" * size]
        start, end = (int(x) for x in rng.split(b"=", 1)[1].split(b"-"))
        n = end - start + 1
        return [b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes %d-%d/%d\r\nContent-Length: %d\r\n\r\n"
                % (start, end, size, n) + b"j" * n]
    return answer


def test_many_lying_holders_cost_restarts_never_the_blob(cluster, origin):
    """Found (with the fix above, which takes holders one at a time after a multi-peer fetch failed):
    each lying holder costs the fetch one of its restarts, and with as many liars as restarts the
    fetch failed ("gave up after 4 bad sources") although the origin has the blob. Now the last
    restart goes to the origin only: the blob arrives, verified, the origin asked once."""
    config = {"origins": {"o": origin.url},
              "fetch": {"peer_timeout": 3.0, "origin_delegation": False, "large_blob_threshold": 1 << 20,
                        "piece_size": 256 << 10}}
    node = cluster.add(config, peers=None)
    data, digest = random_blob(2 << 20, 950)
    origin.put("large", data)
    liars = [HostileBlobPeer(cluster.ip(7 + i)) for i in range(5)]
    for liar in liars:
        liar.answers[digest] = junk_answer(len(data))
    before = node.metrics()
    try:
        result = as_holder(node, liars, [[digest, "c", len(data)]],
                           lambda: node.fetch(digest, len(data), {"plugin": "origin", "name": "o", "path": "/large"}))
    finally:
        for liar in liars:
            liar.stop()
    key = "beiran_verification_failures_total"
    failures = node.metrics()[key] - before.get(key, 0)
    print(f"\nverification failures: {failures}; liars asked: {[liar.asked[digest] for liar in liars]}")
    assert result.get("done") and not result.get("error"), result
    assert node.blob(digest) == data
    assert origin.requests["/large"] == 1, dict(origin.requests)
    assert failures >= 3  # the attack ran: the pieces, then liars one at a time


def test_a_peer_leaving_the_size_out_is_still_held_to_its_byte_cap(cluster, origin):
    """Found: a delegated fetch without a size was charged 0 bytes against [fetch] peer_max_bytes
    (and its real size only if known when it started): a peer that left the size out had only
    peer_max_fetches (64) as its bound, each fetch as large as the origin's blob. Now the size the
    origin tells is charged, and a fetch it puts over the cap ends (too_many_requests)."""
    mib = 1 << 20
    node = cluster.add({"origins": {"o": origin.url}, "fetch": {"peer_max_bytes": "3M"}}, peers=None)
    digests = {}
    for i in range(8):
        data, digest = random_blob(mib, 1000 + i)
        origin.put(f"u{i}", data)
        digests[f"u{i}"] = digest
    origin.rate = 512 * 1024  # ~2 s per blob: they are all in flight together

    async def attack() -> dict[str, str]:
        peer = await RPCPeer(node.url).connect()
        try:
            out = {}
            for name, digest in digests.items():
                ans = await peer.rpc("fetch", digest=digest, size=None,
                                     source={"plugin": "origin", "name": "o", "path": "/" + name})
                out[name] = ans["r"]["state"] if ans["t"] == "rpc_result" else ans["e"]["error"]
            return out
        finally:
            await peer.close()
    answers = asyncio.run(attack())
    last, still = -1, 0
    for _ in range(60):  # until the origin has sent all it will (unchanged for 1.5 s)
        time.sleep(0.5)
        now = origin.total_bytes()
        still, last = (still + 1 if now == last else 0), now
        if still >= 3 and sum(origin.requests.values()) >= 1:
            break
    stored = [n for n, d in digests.items() if node.tcp("GET", f"/blobs/{d}")[0] == 200]
    print(f"\nanswers {answers}; stored {stored}; origin sent {origin.total_bytes() / mib:.1f} MiB "
          "for a peer capped at 3 MiB")
    assert len(stored) <= 3, stored
    assert node.metrics()["beiran_peer_requests_refused_total{cap=bytes}"] >= 5


@pytest.mark.parametrize("first", ["head", "304", "204"])
def test_a_bodyless_answer_that_brings_a_body_never_answers_the_next_request(first):
    """Already safe (untested): a HEAD answer, a 304 or a 204 has no body by definition; an origin
    that sends one anyway (here: a whole forged answer as that "body") must not have it read as the
    answer to the next request on the kept-alive connection. In-process: the real httpstream and
    origin pool against a scripted origin."""
    from beiran import origin_connections
    from beiran.errors import UpstreamError
    from beiran.httpstream import stream_request

    origin = ScriptedOrigin("127.0.0.1")
    forged = ok_head(6) + b"FORGED"
    status = {"head": b"200 OK", "304": b"304 Not Modified", "204": b"204 No Content"}[first]
    origin.answers = {"/first": [b"HTTP/1.1 " + status + b"\r\nContent-Length: %d\r\n\r\n" % len(forged) + forged],
                      "/next": [ok_head(4) + b"real"]}

    async def main() -> tuple[int, bytes]:
        try:
            method = "HEAD" if first == "head" else "GET"
            try:
                async with stream_request(origin.url + "/first", method=method, origin=True) as resp:
                    await resp.read_all(1 << 20)
            except UpstreamError:
                assert first == "204"  # refused outright (Tornado: a 204 must not have a body)
            async with stream_request(origin.url + "/next", origin=True) as resp:
                return resp.code, await resp.read_all(1 << 20)
        finally:
            origin_connections.pool().close()
    try:
        code, body = asyncio.run(main())
    finally:
        origin.stop()
    assert (code, body) == (200, b"real")
    assert origin.asked["/next"] == 1


def _rss_mib(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@pytest.mark.slow
def test_many_stalled_small_transfers_hold_bounded_memory(cluster, origin):
    """Already safe (untested): 48 small blobs (1.5 MiB, each received whole into a 2 MiB buffer)
    from a peer that sends each head and a few bytes and then stalls: the receive pool (32 threads)
    bounds the buffers in use, so the node's memory grows by at most 32 x 2 MiB (plus what Python
    and the kernel add), every fetch ends from the origin, and the node answers its API meanwhile."""
    node = cluster.add({"origins": {"o": origin.url}, **CONFIG}, peers=None)
    peer = HostileBlobPeer(cluster.ip(7))
    n = 3 << 19
    blobs = {f"s{i}": random_blob(n, 1100 + i) for i in range(48)}
    for name, (data, digest) in blobs.items():
        origin.put(name, data)
        peer.answers[digest] = [ok_head(n) + data[:16], 4.0, CLOSE]  # past peer_timeout (3 s)
    assert node.proc is not None
    base = _rss_mib(node.proc.pid)

    def run_all() -> tuple[list[dict], float, bool]:
        with ThreadPoolExecutor(len(blobs)) as pool:
            futs = [pool.submit(node.fetch, d, n, {"plugin": "origin", "name": "o", "path": "/" + k})
                    for k, (_, d) in blobs.items()]
            peak, answered = 0.0, True
            while not all(f.done() for f in futs):
                peak = max(peak, _rss_mib(node.proc.pid))
                answered = answered and bool(node.api("GET", "/ping", timeout=5).get("pong"))
                wait(futs, timeout=0.2)
            return [f.result() for f in futs], peak, answered
    try:
        results, peak, answered = as_holder(node, peer, [[d, "c", n] for _, d in blobs.values()], run_all)
    finally:
        peer.stop()
    print(f"\nRSS {base:.0f} MiB before, {peak:.0f} MiB at most during 48 stalled small transfers")
    assert answered
    assert all(r.get("done") and not r.get("error") for r in results), [r for r in results if r.get("error")]
    assert all(node.blob(d) == data for data, d in blobs.values())
    assert peak - base < 32 * 2 + 96  # the buffers, plus room for 48 blobs' worth of Python and sockets


def test_a_hole_a_failed_first_piece_left_is_filled_by_the_next_peer(cluster, origin):
    """Found (by test_security_https_peer.py): a multi-peer fetch whose first piece failed goes on
    with the next holder from byte 0; its answer, a blob of 2 MiB or less, took the whole-blob path
    into a writer that already held the other pieces, and the fetch failed (with the origin there).
    Two holders that are slow to fail a range from byte 0 and serve every other one: the other
    pieces are done before the first one fails."""
    node = cluster.add({"origins": {"o": origin.url},
                        "fetch": {**CONFIG["fetch"], "large_blob_threshold": 1 << 20, "piece_size": 256 << 10}},
                       peers=None)
    data, digest = random_blob(2 << 20, 77)
    origin.put("hole", data)

    def answer(head: bytes) -> list:
        asked = asked_range(head)
        if asked is None:
            return [ok_head(len(data)) + data]
        start, end = asked
        return [1.0, CLOSE] if start == 0 else [range_head(start, end, len(data)) + data[start:end]]
    peers = [HostileBlobPeer(cluster.ip(7)), HostileBlobPeer(cluster.ip(8))]
    for peer in peers:
        peer.answers[digest] = answer
    try:
        result = as_holder(node, peers, [[digest, "c", len(data)]],
                           lambda: node.fetch(digest, len(data), {"plugin": "origin", "name": "o", "path": "/hole"}))
    finally:
        for peer in peers:
            peer.stop()
    assert result.get("done") and not result.get("error"), result
    assert node.blob(digest) == data
    assert origin.requests["/hole"] == 0
    assert sum(p.asked[digest] for p in peers) >= 9  # eight pieces, and the first again whole
