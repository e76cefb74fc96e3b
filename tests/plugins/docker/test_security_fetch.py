"""Issue 12 items 2 and 3 against the docker plugin: a fake peer (the real websocket protocol)
names an unconfigured registry in `rpc fetch` (SSRF: a decoy on 127.0.0.9 counts connections), a
registry's token realm points elsewhere (the decoy must never get the credentials), and a peer asks
a node with registry credentials to fetch or serve a private blob. Each fails on the old code."""

from __future__ import annotations

import asyncio
import time
from http.server import BaseHTTPRequestHandler

import pytest

from beiran_testkit.decoy import Decoy
from beiran_testkit.fakepeer import RPCPeer
from beiran_testkit.procs import serve_in_thread, stop_server
from beiran_testkit.registry import docker_config, free_port

pytestmark = pytest.mark.cluster


@pytest.fixture
def decoy():
    d = Decoy("127.0.0.9")
    yield d
    d.close()


def _peer_get(node, peer: RPCPeer, digest: str) -> tuple[int, bytes]:
    return node.peer_get(f"/blobs/{digest}", peer.headers("GET", f"/blobs/{digest}"))


def test_peer_source_naming_an_unconfigured_registry_opens_no_connection(cluster, registry, decoy):
    node = cluster.add(docker_config(registry), peers=None)  # allow_unconfigured: its default
    digest = "sha256:" + "ab" * 32

    async def attack() -> dict:
        peer = await RPCPeer(node.url).connect()
        try:
            return await peer.rpc("fetch", digest=digest, size=1000,
                                  source={"plugin": "docker", "registry": decoy.address,
                                          "repository": "internal/secrets", "kind": "blob"})
        finally:
            await peer.close()
    answer = asyncio.run(attack())
    time.sleep(2)  # the old code dialed after answering
    print(f"\nanswer {answer}; connections seen by the decoy: {decoy.connections}")
    assert decoy.connections == 0
    assert answer["t"] == "rpc_error" and answer["e"]["status"] == 403, answer


def test_token_realm_elsewhere_never_receives_the_credentials(cluster, decoy):
    realm = f"http://{decoy.address}/token"

    class Registry401(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(401)
            self.send_header("WWW-Authenticate", f'Bearer realm="{realm}",service="evil"')
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_HEAD = do_GET

    port = free_port()
    server = serve_in_thread(Registry401, "127.0.0.1", port)
    try:
        name = f"127.0.0.1:{port}"
        config = {"plugins": {"docker": {"default_registry": name, "engine": False, "registries": {
            name: {"url": f"http://{name}", "username": "alice", "password": "s3cret"}}},
            **{p: {"enabled": False} for p in ("apt", "npm", "dns", "k8s", "zeroconf")}}}
        node = cluster.add(config, peers=None)
        try:
            status, _, body = node.tcp("GET", "/v2/team/app/manifests/v1", timeout=20)
        except OSError as exc:  # the old code sent the credentials to the decoy, then hung
            status, body = 0, str(exc).encode()
        time.sleep(1)
    finally:
        stop_server(server)
    print(f"\nmirror answered {status}; connections seen by the decoy: {decoy.connections} {decoy.seen}")
    assert not any(b"Authorization" in seen or b"authorization" in seen for seen in decoy.seen)
    assert decoy.connections == 0
    assert status == 401, body


def test_credentialed_blobs_are_never_fetched_for_or_served_to_peers(cluster, registry, test_images):
    img = test_images.img
    registry.proxy.auth = {"scheme": "basic", "user": "alice", "password": "s3cret"}
    config = docker_config(registry)
    config["plugins"]["docker"]["registries"][registry.name].update(username="alice", password="s3cret")
    node = cluster.add(config, peers=None)
    asked, local = img.layers[0], img.layers[1]

    # A node's own client reads a private layer with the node's credentials: it is restricted.
    status, _, body = node.tcp("GET", f"/v2/test/img/blobs/{local.digest}")
    assert status == 200 and body == test_images.layout.path_of(local.digest).read_bytes()

    async def attack() -> tuple[dict, tuple[int, bytes], tuple[int, bytes]]:
        peer = await RPCPeer(node.url).connect()
        try:
            answer = await peer.rpc("fetch", digest=asked.digest, size=asked.size,
                                    source={"plugin": "docker", "registry": registry.name,
                                            "repository": "test/img", "kind": "blob"})
            await asyncio.sleep(1)
            fetched = await asyncio.to_thread(_peer_get, node, peer, asked.digest)
            served = await asyncio.to_thread(_peer_get, node, peer, local.digest)
            return answer, fetched, served
        finally:
            await peer.close()
    answer, fetched, served = asyncio.run(attack())
    print(f"\nrpc fetch of a private layer: {answer}; peer GET of it: {fetched[0]}; "
          f"peer GET of the layer the node's own client read: {served[0]}")
    assert answer["t"] == "rpc_error" and answer["e"]["status"] == 401, answer
    assert fetched[0] == 404
    assert served[0] == 403 and b"private" in served[1]
    assert not node.api("GET", "/blobs")["blobs"] or asked.digest not in {
        b["digest"] for b in node.api("GET", "/blobs")["blobs"]}


@pytest.mark.parametrize(("url", "realms", "realm", "allowed"), [
    ("https://ghcr.io", (), "https://ghcr.io/token", True),
    ("https://ghcr.io", (), "https://evil.example/token", False),
    ("https://ghcr.io", (), "http://ghcr.io/token", False),  # the credentials would cross in clear
    ("https://registry.gitlab.com", ("gitlab.com",), "https://gitlab.com/jwt/auth", True),
    ("http://127.0.0.1:5000", (), "http://127.0.0.1:5000/token", True),  # its own origin, as configured
    ("http://127.0.0.1:5000", (), "http://127.0.0.1:5001/token", False),
    ("http://127.0.0.1:5000", (), "http://127.0.0.9:5000/token", False),
])
def test_which_token_realms_get_the_credentials(url, realms, realm, allowed):
    from beiran_plugins.docker.upstream import Endpoint

    ep = Endpoint("r", url, "alice", "s3cret", token_realms=realms)
    assert ep.realm_allowed(realm) is allowed
