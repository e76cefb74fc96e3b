"""Red team: a registry client asks the mirror for a blob whose size it does not know (a GET by
digest before any manifest named it), so the node takes the size a holder announced; the hostile
holder announced a wrong one (and has nothing to send). Whatever it announced, the client must get
the blob's right bytes or a visibly broken answer, never a complete-looking answer of other length.

Found: the answer was framed with the announced size (Content-Length and where the body ends):
with a claim smaller than the blob the client got a clean 200 of the first N bytes, with a larger
one a body cut short although the verified blob was in the store by then."""

from __future__ import annotations

import http.client

import pytest

from beiran_testkit.hostilepeer import HostileBlobPeer, as_holder
from beiran_testkit.registry import docker_config

pytestmark = pytest.mark.cluster
MiB = 1 << 20


def get(node, path: str) -> tuple[str, bytes]:
    """("complete", body) when the answer ended as its framing said, else ("cut", what came)."""
    conn = http.client.HTTPConnection(node.ip, node.port, timeout=30)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        try:
            body = resp.read()
        except http.client.IncompleteRead as exc:
            return "cut", exc.partial
        return ("complete" if resp.status == 200 else f"status {resp.status}"), body
    finally:
        conn.close()


def test_a_holders_wrong_size_never_frames_a_complete_looking_answer(cluster, registry, test_images):
    node = cluster.add({**docker_config(registry), "fetch": {"origin_delegation": False, "peer_timeout": 3.0}},
                       peers=None)
    image = test_images.img
    small, large = image.layers[0], image.config  # the claims: 100 bytes for the first, 2 MiB for the other
    assert small.size > 100 and large.size < MiB
    peer = HostileBlobPeer(cluster.ip(7))  # it announces both and then has neither (404)

    def scenario() -> dict[str, tuple[str, bytes]]:
        return {"small": get(node, f"/v2/test/img/blobs/{small.digest}"),
                "large": get(node, f"/v2/test/img/blobs/{large.digest}")}
    try:
        got = as_holder(node, peer, [[small.digest, "c", 100], [large.digest, "c", 2 * MiB]], scenario)
    finally:
        peer.stop()
    right = {"small": test_images.layout.path_of(small.digest).read_bytes(),
             "large": test_images.layout.path_of(large.digest).read_bytes()}
    print(f"\n{ {k: (how, len(body), body == right[k]) for k, (how, body) in got.items()} }")
    for name, (how, body) in got.items():
        assert how != "complete" or body == right[name], f"{name}: a complete answer of {len(body)} wrong bytes"
    assert got["large"] == ("complete", right["large"])  # nothing had left: answered from the store
    assert peer.asked[small.digest] == 1 and peer.asked[large.digest] == 1
