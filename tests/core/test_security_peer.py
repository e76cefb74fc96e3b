"""Untrusted peers, part 1 (issue 12 items 1, 3, 6): a fake peer speaking the real protocol tries
to make a node fetch from an address of its choosing, to pass as another node, and to replay
captured requests."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from tornado.httpclient import HTTPClientError

from beiran_testkit.daemon import wait_until
from beiran_testkit.fakepeer import CountingListener, FakePeer, sign
from beiran_testkit.fixtures import random_blob

pytestmark = pytest.mark.cluster
TOKEN = "s3cret-token"


def test_hello_url_is_never_fetched_from_only_the_socket_address(cluster):
    """The hello claims url=http://127.0.0.8:PORT/prefix; the node must fetch the advertised blob
    from the connection's own address (with the claimed port), never from the claimed URL."""
    n1 = cluster.add(peers=None, config={"fetch": {"peer_timeout": 3.0, "origin_delegation": False}})
    internal = CountingListener("127.0.0.8")  # an "internal-only" service the attacker wants to read
    own_ip = cluster.ip(7)
    own = CountingListener(own_ip)  # the fake peer's own address, where a fetch may legitimately go
    data, digest = random_blob(1000, 41)

    async def attack() -> dict:
        peer = FakePeer(n1.url, source_ip=own_ip)
        await peer.connect()
        await peer.join([[digest, "c", len(data)]], url=internal.url + "/prefix", port=own.port,
                        addresses=["127.0.0.8"])
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, wait_until, lambda: peer.uuid in n1.online_peers(), 10)
        result = await loop.run_in_executor(None, n1.fetch, digest, len(data))
        peer.close()
        return result

    try:
        result = asyncio.run(attack())
    finally:
        internal.stop()
        own.stop()
    print(f"\nconnections: claimed url {internal.connections}, socket address {own.connections}")
    assert internal.connections == 0, "the node dialed the address the peer's hello claimed"
    assert own.connections >= 1 and own.requests[0].startswith(f"GET /blobs/{digest} ".encode())
    assert "error" in result  # the fake peer's bytes do not verify; nothing is stored
    assert n1.tcp("GET", f"/blobs/{digest}")[0] == 404


def test_peers_outside_peer_cidrs_are_refused(cluster):
    n1 = cluster.add(peers=None, config={"peer_cidrs": [f"{cluster.ip(0)}/32"]})
    data, digest = random_blob(1000, 42)
    n1.add_blob(data)

    async def attack() -> None:
        with pytest.raises(HTTPClientError) as err:
            await FakePeer(n1.url, source_ip=cluster.ip(7)).connect()
        assert err.value.code == 403
    asyncio.run(attack())
    status, body = n1.peer_get(f"/blobs/{digest}")
    assert status == 403 and "peer_cidrs" in json.loads(body)["message"]
    assert n1.api("GET", "/ping")["pong"]


def test_one_auth_parser_duplicate_keys_and_bad_signatures_are_401(cluster):
    n1 = cluster.add(peers=None, config={"cluster_token": TOKEN})
    data, digest = random_blob(1000, 43)
    n1.add_blob(data)
    path = f"/blobs/{digest}"
    victim = "00000000-0000-4000-8000-000000000001"
    me = "00000000-0000-4000-8000-000000000002"
    assert n1.peer_get(path, {"X-Beiran-Auth": sign(TOKEN, "GET", path, me)})[0] == 200
    cases = {
        # signed for `me`, with the victim's UUID put first: two parsers would disagree on who asks
        "duplicate uuid": f"uuid={victim}," + sign(TOKEN, "GET", path, me),
        "duplicate sig": sign(TOKEN, "GET", path, me) + ",sig=" + "0" * 64,
        "non-hex sig": sign(TOKEN, "GET", path, me).rsplit("sig=", 1)[0] + "sig=" + "é" * 64,
        "short sig": sign(TOKEN, "GET", path, me).rsplit("sig=", 1)[0] + "sig=abc",
        "not a uuid": sign(TOKEN, "GET", path, "not-a-uuid"),
        "no fields": "garbage",
    }
    for what, header in cases.items():
        status, body = n1.peer_get(path, {"X-Beiran-Auth": header})
        assert status == 401, (what, status, body[:200])
        assert json.loads(body)["error"] == "unauthorized", what
    assert "Traceback" not in n1.log()


def test_replayed_or_extended_requests_are_refused(cluster):
    n1 = cluster.add(peers=None, config={"cluster_token": TOKEN})
    data, digest = random_blob(1000, 44)
    n1.add_blob(data)
    path = f"/blobs/{digest}"
    me = "00000000-0000-4000-8000-000000000003"
    header = sign(TOKEN, "GET", path, me)
    assert n1.peer_get(path, {"X-Beiran-Auth": header}) == (200, data)
    status, body = n1.peer_get(path, {"X-Beiran-Auth": header})
    assert status == 401 and "already used" in json.loads(body)["message"]
    # the signature covers the query: one signed for the bare path does not carry a query
    status, _ = n1.peer_get(path + "?x=1", {"X-Beiran-Auth": sign(TOKEN, "GET", path, me)})
    assert status == 401
    assert n1.peer_get(path + "?x=1", {"X-Beiran-Auth": sign(TOKEN, "GET", path + "?x=1", me)})[0] == 200
    # and the method
    assert n1.peer_get(path, {"X-Beiran-Auth": sign(TOKEN, "HEAD", path, me)})[0] == 401
    # an old proof (outside the window) is refused too
    old = sign(TOKEN, "GET", path, me, ts=int(time.time()) - 400)
    assert n1.peer_get(path, {"X-Beiran-Auth": old})[0] == 401


def test_captured_peer_upgrade_header_does_not_let_anyone_join(cluster):
    n1 = cluster.add(peers=None, config={"cluster_token": TOKEN})

    async def attack() -> None:
        member = FakePeer(n1.url, token=TOKEN)
        await member.connect()
        captured = member.auth_header
        member.close()
        intruder = FakePeer(n1.url)  # no token: only what it sniffed off the wire
        with pytest.raises(HTTPClientError) as err:
            await intruder.connect(header=captured)
        assert err.value.code == 401
    asyncio.run(attack())
    assert "already used" in n1.log()


def test_hello_uuid_must_be_the_signed_uuid(cluster):
    n1 = cluster.add(peers=None, config={"cluster_token": TOKEN})
    signer = "00000000-0000-4000-8000-000000000004"
    claimed = "00000000-0000-4000-8000-000000000005"

    async def attack() -> None:
        peer = FakePeer(n1.url, token=TOKEN, node=claimed)
        await peer.connect(signed_uuid=signer)
        await peer.hello()
        assert await peer.closed(5), "a hello naming another node than the signed one was accepted"
        assert peer.close_code == 4001
    asyncio.run(attack())
    time.sleep(0.3)
    assert claimed not in n1.online_peers()
    assert claimed not in {n["uuid"] for n in n1.nodes(all=True)}


def test_body_hash_is_signed_and_nonce_memory_is_bounded():
    """In-process: a signed body cannot be swapped, and the nonce cache never forgets into a replay."""
    from tornado.httputil import HTTPHeaders, HTTPServerRequest

    from beiran.errors import Unauthorized
    from beiran.peer.auth import NonceCache, PeerAuth, requesting_peer

    auth = PeerAuth(TOKEN, "00000000-0000-4000-8000-00000000000a")
    me = "00000000-0000-4000-8000-00000000000b"

    def request(body: bytes, header: str) -> HTTPServerRequest:
        return HTTPServerRequest(method="POST", uri="/k8s/grants", body=body,
                                 headers=HTTPHeaders({"X-Beiran-Auth": header}))
    good = request(b'{"scope": "a"}', sign(TOKEN, "POST", "/k8s/grants", me, body=b'{"scope": "a"}'))
    assert auth.check_request(good) is not None and requesting_peer(good) == me
    swapped = request(b'{"scope": "b"}', sign(TOKEN, "POST", "/k8s/grants", me, body=b'{"scope": "a"}'))
    with pytest.raises(Unauthorized):
        auth.check_request(swapped)
    unsigned_body = request(b'{"scope": "b"}', sign(TOKEN, "POST", "/k8s/grants", me))
    with pytest.raises(Unauthorized):
        auth.check_request(unsigned_body)

    cache = NonceCache(capacity=100)
    now = time.time()
    for i in range(250):
        assert cache.add(f"{i:032x}", int(now) - 250 + i, now)
        assert len(cache) <= 100
    assert not cache.add(f"{0:032x}", int(now) - 250, now)  # dropped from memory, still refused
    assert not cache.add(f"{249:032x}", int(now) - 1, now)  # remembered
