"""Membership datagrams (beiran/peer/transport.py) attacked on a real daemon: with a cluster token
only datagrams with the right HMAC, a fresh timestamp and an unseen sequence number are heard, and
an address learned from gossip outside `peer_cidrs` is never added (nor sent to)."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import time
import uuid

import pytest

from beiran_testkit.daemon import Daemon, wait_until

pytestmark = pytest.mark.cluster
TOKEN = "membership-security-test-token-42"


def datagram(payload: list, sender: str, token: str | None, ts: float | None = None,
             mac: bytes | None = None) -> bytes:
    """The wire format as the module docstring describes it, written here as an attacker would."""
    seq = int((time.time() if ts is None else ts) * 1e6)
    head = b"BSW1" + b"m" + sender.encode() + seq.to_bytes(8, "big")
    body = json.dumps(payload).encode()
    if mac is None and token is not None:
        key = hmac.new(token.encode(), b"beiran swim v1", hashlib.sha256).digest()
        mac = hmac.new(key, head + body, hashlib.sha256).digest()
    return head + (mac or b"") + body


def members(node: Daemon) -> int:
    return node.api("GET", "/stats")["cluster"]["members"]


def replies(sock: socket.socket, wait: float, first: bool = False) -> list[bytes]:
    got: list[bytes] = []
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and not (first and got):
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            got.append(sock.recv(65536))
        except TimeoutError:
            break
    return got


def test_membership_datagrams_need_the_token_are_not_replayed_and_stay_in_peer_cidrs(cluster):
    base = cluster.ip(0).rsplit(".", 1)[0]
    node = cluster.add({"cluster_token": TOKEN, "peer_cidrs": [f"{base}.0/24"]}, peers=[])
    target = (node.ip, node.port)
    attacker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    attacker.bind((f"{base}.200", 0))
    me = f"{base}.200:{attacker.getsockname()[1]}"
    outside = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # loopback, but outside peer_cidrs
    outside.bind(("127.254.0.9", 0))
    outside_addr = f"127.254.0.9:{outside.getsockname()[1]}"
    assert members(node) == 1
    try:
        def join(mid: str, addr: str = me) -> list:
            return ["j", ["a", mid, 0, addr]]

        # no MAC, a wrong token, a stale timestamp: not heard (no reply, no member)
        forged = [datagram(join(str(uuid.uuid4())), str(uuid.uuid4()), None),
                  datagram(join(str(uuid.uuid4())), str(uuid.uuid4()), "wrong-token"),
                  datagram(join(str(uuid.uuid4())), str(uuid.uuid4()), TOKEN, ts=time.time() - 600)]
        for data in forged:
            attacker.sendto(data, target)
        assert replies(attacker, 1.5) == []
        assert members(node) == 1

        # the right token: heard (the positive control: the daemon answers with its state)
        a = str(uuid.uuid4())
        good = datagram(join(a), a, TOKEN)
        attacker.sendto(good, target)
        assert replies(attacker, 3.0, first=True), "a correctly signed join got no answer"
        wait_until(lambda: members(node) == 2, 5, what="the signed join to add a member")
        # the attacker never acks the daemon's probes: the member is soon declared dead
        wait_until(lambda: members(node) == 1, 20, interval=0.2, what="the silent member to be declared dead")

        # the same datagram again (a replay): dropped unanswered
        replies(attacker, 1.0)  # drain probes that may follow the join
        attacker.sendto(good, target)
        got = [json.loads(r[81:]) for r in replies(attacker, 1.0)]
        assert not any(m[0] == "y" for m in got), got

        # a signed join naming an address outside peer_cidrs: not added, and nothing is sent there
        b = str(uuid.uuid4())
        attacker.sendto(datagram(join(b, outside_addr), b, TOKEN), target)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            assert members(node) == 1
            time.sleep(0.1)
        assert replies(outside, 0.5) == []
    finally:
        attacker.close()
        outside.close()
