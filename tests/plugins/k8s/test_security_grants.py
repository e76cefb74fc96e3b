"""Issue 12 item 3: `POST /k8s/grants` was self-asserted: any holder of the cluster token could
grant itself a private repository and then download its layers. A fake peer (the real websocket
protocol, a valid cluster-token signature) tries exactly that against a real daemon."""

from __future__ import annotations

import asyncio
import json

import pytest

from beiran_testkit.daemon import wait_until
from beiran_testkit.fakepeer import RPCPeer

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def _signed(node, peer: RPCPeer, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    headers = {**peer.headers(method, path), "Content-Type": "application/json"}
    status, _, payload = node.daemon.tcp(method, path, body, headers, timeout=20)
    return status, payload


def test_a_peer_cannot_grant_itself_a_private_image(env):
    n1 = env.nodes[0]
    ref, image = env.image(layers=2, private=True)
    with n1.cri() as cri:
        cri.pull(ref, "alice", env.users["alice"])
    scope = ref.rsplit(":", 1)[0]
    layer = image.layers[0].digest

    async def attack() -> tuple[tuple[int, bytes], tuple[int, bytes]]:
        peer = await RPCPeer(n1.daemon.url, token=env.token).connect()
        try:
            await asyncio.to_thread(wait_until, lambda: peer.uuid in n1.daemon.online_peers(), 10, 0.05,
                                    "the fake peer to be online")
            body = json.dumps({"scope": scope, "manifest": image.manifest.digest}).encode()
            grant = await asyncio.to_thread(_signed, n1, peer, "POST", "/k8s/grants", body)
            blob = await asyncio.to_thread(_signed, n1, peer, "GET", f"/blobs/{layer}")
            return grant, blob
        finally:
            await peer.close()
    grant, blob = asyncio.run(attack())
    print(f"\nself-asserted grant answered {grant[0]}; the private layer then answered {blob[0]}")
    assert grant[0] in (404, 405), grant
    assert blob[0] == 403, blob[0]
