"""Must show 3: a private image (docker-registry with htpasswd). The right credentials work on node 1
and node 2, each reading the private layers from the registry itself (a peer's claim of access
proves nothing, so no peer is served private layers); node 3 with wrong or no credentials gets the
registry's refusal through CRI and never receives a layer, not even by asking a peer for it."""

from __future__ import annotations

import grpc
import pytest

from beiran_testkit.daemon import wait_until
from beiran_testkit.fakepeer import auth_headers

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def _store(node) -> set[str]:
    return {b["digest"] for b in node.daemon.api("GET", "/blobs")["blobs"]}


def _peer_get(owner, requester_uuid: str, digest: str, token: str) -> int:
    """GET /blobs/<digest> on `owner` as the node `requester_uuid`, signed with the cluster token."""
    path = f"/blobs/{digest}"
    return owner.daemon.peer_get(path, auth_headers(token, requester_uuid, "GET", path))[0]


def test_private_image_shared_only_with_nodes_that_can_read_it(env):
    n1, n2, n3 = env.nodes
    ref, image = env.image(layers=3, private=True)
    layers = [b.digest for b in image.layers]

    with n1.cri() as cri:
        image_id = cri.pull(ref, "alice", env.users["alice"])
    assert ref in n1.containerd.image_refs()
    served = env.private.blobs_served()
    assert {d: served[d] for d in layers} == {d: 1 for d in layers}, served

    with n2.cri() as cri:  # another user with access: node 2 shows it by reading the layers itself
        assert cri.pull(ref, "bob", env.users["bob"]) == image_id
    assert ref in n2.containerd.image_refs()
    served = env.private.blobs_served()
    assert {d: served[d] for d in layers} == {d: 2 for d in layers}, served  # once per node
    assert set(layers) <= _store(n2)

    with n3.cri() as cri:
        with pytest.raises(grpc.RpcError) as wrong:
            cri.pull(ref, "alice", "not-the-password")
        assert wrong.value.code() == grpc.StatusCode.UNAUTHENTICATED, wrong.value.details()
        assert "401" in wrong.value.details() and env.private.name in wrong.value.details()
        with pytest.raises(grpc.RpcError) as anonymous:
            cri.pull(ref)
        assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED, anonymous.value.details()
        assert not cri.status(ref).HasField("image")
    assert ref not in n3.containerd.image_refs()
    assert not set(layers) & _store(n3)

    # Node 3 asking its peers for a layer by digest is refused too: no bytes.
    final = n3.daemon.fetch(layers[-1], image.layers[-1].size)
    assert final.get("error"), final
    assert not set(layers) & _store(n3)
    assert _peer_get(n1, n3.daemon.uuid, layers[0], env.token) == 403
    assert _peer_get(n1, n2.daemon.uuid, layers[0], env.token) == 403  # private layers go to no peer
    assert env.private.blobs_served() == served

    with n1.cri() as cri:
        info = cri.status(ref, verbose=True).info["beiran"]
    assert '"private": true' in info

    # The restriction is in node 1's database: a restart changes nothing.
    n1.daemon.stop()
    n1.daemon.start()
    wait_until(lambda: {n2.daemon.uuid, n3.daemon.uuid} <= n1.daemon.online_peers(), 20, what="peers again")
    assert _peer_get(n1, n3.daemon.uuid, layers[0], env.token) == 403
    assert _peer_get(n1, n2.daemon.uuid, layers[0], env.token) == 403


def test_public_blobs_still_flow_to_anyone(env):
    """The policy guards private images only: a public layer goes to node 3 with no grant."""
    n1, n3 = env.nodes[0], env.nodes[2]
    ref, image = env.image(layers=2)
    with n1.cri() as cri:
        cri.pull(ref)
    assert _peer_get(n1, n3.daemon.uuid, image.layers[0].digest, env.token) == 200


def test_pull_with_kubelet_identity_and_registry_tokens(env):
    """kubelet hands over what credential helpers give: an identity token (an OAuth2 refresh token,
    exchanged at the registry's token service) or a registry token (sent as it is)."""
    n1, n2, n3 = env.nodes
    proxy = env.registry.proxy
    ref, image = env.image(layers=2)
    proxy.auth = {"scheme": "bearer", "refresh_token": "refresh-ok"}
    try:
        with n1.cri() as cri:
            image_id = cri.pull(ref, identity_token="refresh-ok")
        assert ref in n1.containerd.image_refs()
        exchanges = [r for r in proxy.token_requests if r["method"] == "POST"]
        assert exchanges and exchanges[-1]["form"]["refresh_token"] == ["refresh-ok"]

        proxy.tokens.add("handed-over")
        with n2.cri() as cri:
            assert cri.pull(ref, registry_token="handed-over") == image_id
        assert ref in n2.containerd.image_refs()
        assert {b.digest for b in image.layers} <= _store(n2)

        with n3.cri() as cri:
            for kw in ({"identity_token": "refresh-wrong"}, {"registry_token": "revoked"}):
                with pytest.raises(grpc.RpcError) as err:
                    cri.pull(ref, **kw)
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, (kw, err.value.details())
                assert "401" in err.value.details(), err.value.details()
        assert ref not in n3.containerd.image_refs()
    finally:
        proxy.auth = None


def test_registry_403_is_permission_denied(env):
    node = env.nodes[2]
    ref, image = env.image(layers=1, size=1000)
    repo = ref.split("/", 1)[1].rsplit(":", 1)[0]
    denied = b'{"errors": [{"code": "DENIED", "message": "requested access to the resource is denied"}]}'
    env.registry.proxy.fail[f"^/v2/{repo}/manifests/"] = (403, denied)
    try:
        with node.cri() as cri:
            with pytest.raises(grpc.RpcError) as err:
                cri.pull(ref, "carol", "her-password")
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, err.value.details()
        assert "403" in err.value.details() and env.registry.name in err.value.details()
        assert ref not in node.containerd.image_refs()
        assert not {b.digest for b in image.layers} & _store(node)
    finally:
        env.registry.proxy.fail.clear()
