"""Issue 18 item 9: a peer that no longer holds a blob (it answers 404) is no fault and no news: the
fetch moves on to the next source without an INFO line or a peer-failure count. Before the fix every
such answer logged "peer ... failed ... answered 404; trying the next source" and counted a failure."""

from __future__ import annotations

import asyncio
from http.server import BaseHTTPRequestHandler

import pytest

from beiran_testkit.fakepeer import RPCPeer
from beiran_testkit.fixtures import random_blob
from beiran_testkit.procs import serve_in_thread

pytestmark = [pytest.mark.cluster]


class _NotHere(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_a_peer_without_the_blob_is_skipped_quietly(cluster, origin):
    data, digest = random_blob(64 << 10, seed=404)
    origin.put("quiet.bin", data)
    node = cluster.add({"origins": {"o": origin.url}, "log_level": "info"}, peers=None)
    gone = serve_in_thread(_NotHere, "127.0.0.1", 0)  # where the node will look for the peer's copy
    try:
        async def run() -> dict:
            peer = RPCPeer(node.url, port=gone.server_address[1], holdings=[[digest, "c", len(data)]])
            await peer.connect()
            try:
                return await asyncio.to_thread(node.fetch, digest, len(data),
                                               {"plugin": "origin", "name": "o", "path": "/quiet.bin"})
            finally:
                await peer.close()
        result = asyncio.run(run())
    finally:
        gone.shutdown()
    assert result.get("sources") == {"origin": len(data)}, result
    assert node.blob(digest) == data
    info = [line for line in node.log().splitlines() if " INFO " in line and "trying the next source" in line]
    assert info == [], info
    assert node.metrics().get("beiran_peer_failures_total", 0) == 0
