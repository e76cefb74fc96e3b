"""Red team on stop 13's fast paths (whole-blob receive, the peer answer parser): a hostile peer
that holds (says it holds) a blob answers a real daemon's blob request with a lying head, too many
or too few bytes, the wrong bytes, a stall or a cut. Whatever it sends, the node's own client must
get the right bytes from the origin, asked once; nothing unverified is stored; no temp file stays.

The tests that found a weakness say so in their docstring (they failed on the code before the fix);
the others cover attacks that already failed safely and had no test."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from beiran_testkit.daemon import Daemon, wait_until
from beiran_testkit.fakepeer import RPCPeer
from beiran_testkit.fixtures import random_blob
from beiran_testkit.hostilepeer import CLOSE, HostileBlobPeer, ok_head

pytestmark = pytest.mark.cluster
CONFIG = {"fetch": {"peer_timeout": 3.0, "origin_delegation": False}}


def as_holder(node: Daemon, peer: HostileBlobPeer, holdings: list[list], body: Callable[[], Any]) -> Any:
    """Run `body` (blocking calls on the node) while an RPCPeer from the hostile peer's address
    announces `holdings` complete: the node fetches them from the hostile peer's endpoint."""
    async def run() -> Any:
        rpc = await RPCPeer(node.url, port=peer.port, holdings=holdings, source_ip=peer.ip).connect()
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, lambda: wait_until(lambda: rpc.uuid in node.online_peers(), 10))
            return await loop.run_in_executor(None, body)
        finally:
            await rpc.close()
    return asyncio.run(run())


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
