"""Peer RPC without websockets: above `[cluster] full_mesh_max` the core calls a peer's `rpc_*` over
a signed `POST /peer/rpc/<method>` (beiran/peer/calls.py, rpc_http.py), so what was built on the
websocket RPC (preheat first) keeps working in a large cluster; and that route is a peer route, as
strict as the websocket: signed when a token is set, peer methods only, arguments checked."""

from __future__ import annotations

import hashlib
import json
import time

import pytest

from beiran_testkit.daemon import Daemon, wait_until
from beiran_testkit.fakepeer import sign
from beiran_testkit.fixtures import random_blob

MiB = 1 << 20
TOKEN = "swim-rpc-test-token-0123456789abcdef"
OTHER = "00000000-0000-4000-8000-00000000beef"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def preheat(node: Daemon, blobs: list[dict], nodes: object = "all") -> tuple[list[dict], dict]:
    """The core preheat through the admin API; (progress lines, summary)."""
    status, _, payload = node.request("POST", "/preheat", {"blobs": blobs, "nodes": nodes}, timeout=120)
    assert status == 200, payload[:300]
    lines = [json.loads(x) for x in payload.splitlines() if x.strip()]
    return lines[:-1], lines[-1]


@pytest.mark.slow
@pytest.mark.cluster
def test_core_preheat_reaches_every_node_in_swim_mode(cluster, origin):
    """8 daemons, full_mesh_max = 3: no peer websockets, yet a preheat of "all" from one node puts
    the blob on all 8 (bytes verified), fetched from the origin once."""
    t_start = time.monotonic()
    n = 8
    cfg = {"origins": {"o": origin.url}, "cluster": {"full_mesh_max": 3}, "cluster_token": TOKEN,
           "log_level": "info"}
    nodes: list[Daemon] = []
    for _ in range(n):
        nodes.append(cluster.add(cfg, peers=[x.url for x in nodes[:2]], start=False))
    for node in nodes:
        node.start(wait=False)
    for node in nodes:
        node.wait_ready(60)
    for node in nodes:
        wait_until(lambda node=node: (c := node.api("GET", "/nodes")["cluster"])["mode"] == "swim"
                   and c["members"] == n, 40, interval=0.2, what=f"{node.name} in swim mode with {n} members")
    t_swim = time.monotonic()

    data, digest = random_blob(8 * MiB, 77)
    origin.put("pre", data)
    blob = {"digest": digest, "size": len(data), "source": {"plugin": "origin", "name": "o", "path": "/pre"}}
    lines, summary = preheat(nodes[0], [blob])
    assert lines[0]["event"] == "nodes" and sorted(lines[0]["nodes"]) == sorted(x.uuid for x in nodes), lines[0]
    assert summary.get("failed") == [] and len(summary["nodes"]) == n, summary
    for node in nodes:
        assert sha(node.blob(digest)) == digest, node.name
    assert origin.requests["/pre"] == 1, origin.requests
    assert summary["sources"].get("origin") == len(data), summary["sources"]

    # a node named by a UUID prefix (a member, not a websocket peer) is asked too, from the CLI
    data2, digest2 = random_blob(1 * MiB, 78)
    origin.put("one", data2)
    far = nodes[-1]
    src = json.dumps({"plugin": "origin", "name": "o", "path": "/one"})
    one = nodes[1].cli("blobs", "preheat", digest2, "--size", str(len(data2)), "--source", src,
                       "--nodes", far.uuid[:12], "--json")
    assert one.get("failed") == [] and [r["node"] for r in one["nodes"]] == [far.uuid], one
    assert sha(far.blob(digest2)) == digest2
    table = nodes[1].cli("blobs", "preheat", digest2, "--source", src, "--nodes", far.uuid[:12])
    assert "on 1 of 1 nodes" in table and far.uuid[:8] in table, table

    # what operators see: every member counted and listed online, though no websocket is open
    assert nodes[0].api("GET", "/status")["peers_online"] == n - 1
    shown = {row["uuid"]: row["status"] for row in nodes[0].api("GET", "/ui/state")["nodes"]}
    assert shown == {x.uuid: "self" if x is nodes[0] else "online" for x in nodes}, shown
    print(f"\n{n} daemons in swim after {t_swim - t_start:.1f}s; preheat of 8 MiB on all {n}: "
          f"{summary['elapsed']}s, sources {summary['sources']}; test {time.monotonic() - t_start:.1f}s")


def test_peer_rpc_route_refuses_unsigned_forged_replayed_and_non_peer_calls(cluster):
    node = cluster.add({"cluster_token": TOKEN}, peers=None)
    me = OTHER

    def post(method: str, body: dict, header: str | None) -> tuple[int, dict]:
        raw = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", **({"X-Beiran-Auth": header} if header else {})}
        status, _, payload = node.tcp("POST", f"/peer/rpc/{method}", raw, headers)
        try:
            return status, json.loads(payload or b"{}")
        except ValueError:
            return status, {"raw": payload[:200]}

    digest = "sha256:" + "ab" * 32
    body = {"from": me, "params": {"digests": [digest]}}
    raw = json.dumps(body).encode()
    # no proof, a wrong token, a proof for another body, for another method: refused before any work
    assert post("progress", body, None)[0] == 401
    assert post("progress", body, sign("not-the-token", "POST", "/peer/rpc/progress", me, raw))[0] == 401
    other_body = json.dumps({"from": me, "params": {"digests": []}}).encode()
    assert post("progress", body, sign(TOKEN, "POST", "/peer/rpc/progress", me, other_body))[0] == 401
    assert post("preheat", body, sign(TOKEN, "POST", "/peer/rpc/progress", me, raw))[0] == 401
    # signed: answered, once (a replay of the same proof is refused)
    good = sign(TOKEN, "POST", "/peer/rpc/progress", me, raw)
    status, answer = post("progress", body, good)
    assert status == 200 and answer["r"][digest]["state"] == "missing", answer
    assert post("progress", body, good)[0] == 401
    # signed, but not a method peers may call: admin commands and internals are not reachable
    for method in ("probe", "fetch_info", "stop", "call_fetch", "serve_fetch", "check_source"):
        status, answer = post(method, body, sign(TOKEN, "POST", f"/peer/rpc/{method}", me, raw))
        assert status == 404, (method, status, answer)
    # signed peer method, bad arguments: a clear 400, the method's own checks apply
    bad = {"from": me, "params": {"digests": "x" * 10, "rm": True}}
    status, answer = post("progress", bad, sign(TOKEN, "POST", "/peer/rpc/progress", me, json.dumps(bad).encode()))
    assert status == 400, answer
    bad = {"from": me, "params": {"blobs": [{"digest": digest, "size": 1, "source": {"plugin": "nope"}}]}}
    status, answer = post("preheat", bad, sign(TOKEN, "POST", "/peer/rpc/preheat", me, json.dumps(bad).encode()))
    assert status in (400, 403), answer
    assert not node.tracebacks("peer/rpc")

    # without a token the caller's UUID is only a claim: what the websocket refuses then is refused
    # here too (a preheat from peers needs a cluster token), what it answers is answered
    open_node = cluster.add({}, peers=None)
    blobs = {"from": me, "params": {"blobs": [{"digest": digest, "size": 1,
                                               "source": {"plugin": "origin", "name": "o", "path": "/x"}}]}}
    status, _, payload = open_node.tcp("POST", "/peer/rpc/preheat", json.dumps(blobs).encode(),
                                       {"Content-Type": "application/json"})
    assert status == 403 and b"cluster_token" in payload, (status, payload)
    status, _, payload = open_node.tcp("POST", "/peer/rpc/progress", raw, {"Content-Type": "application/json"})
    assert status == 200 and json.loads(payload)["r"][digest]["state"] == "missing", payload


def test_peer_calls_over_http_are_capped_per_peer_and_in_total():
    from types import SimpleNamespace

    from beiran.errors import TooManyRequests
    from beiran.peer.calls import MAX_INBOUND, MAX_INBOUND_TOTAL, PeerCalls

    calls = PeerCalls(SimpleNamespace())  # type: ignore[arg-type]
    for _ in range(MAX_INBOUND):
        calls.admit("a")
    with pytest.raises(TooManyRequests):
        calls.admit("a")
    calls.release("a")
    calls.admit("a")  # a finished call frees its slot
    peers = [f"p{i}" for i in range(MAX_INBOUND_TOTAL)]
    with pytest.raises(TooManyRequests):  # new UUIDs each time do not get past the total
        for p in peers:
            calls.admit(p)
    assert sum(calls.inbound.values()) == MAX_INBOUND_TOTAL
    for p in list(calls.inbound):
        for _ in range(calls.inbound[p]):
            calls.release(p)
    assert not calls.inbound
