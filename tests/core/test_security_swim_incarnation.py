"""Red team on membership (swim datagrams): claims about other members. A member that holds the
cluster token (or anyone in peer_cidrs when there is none) is still an untrusted peer: it must not
be able to make a good member look dead, or take over its address, for longer than the member
needs to refute it. Real daemon in swim mode, real SWIM members in this process, and a raw UDP
attacker that signs its datagrams with the token."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import socket
import time
import uuid

import pytest

from beiran.peer.swim_members import MAX_INC, MAX_INC_JUMP
from beiran_testkit.daemon import Daemon, wait_until
from beiran_testkit.swimpeers import start_swim_peers, stop_all

pytestmark = pytest.mark.cluster
TOKEN = "swim-incarnation-attack-token"


def signed(payload: list, sender: str) -> bytes:
    """A membership datagram as transport.py defines it (magic, channel, sender, sequence, MAC)."""
    head = b"BSW1m" + sender.encode() + int(time.time() * 1e6).to_bytes(8, "big")
    body = json.dumps(payload).encode()
    key = hmac.new(TOKEN.encode(), b"beiran swim v1", hashlib.sha256).digest()
    return head + hmac.new(key, head + body, hashlib.sha256).digest() + body


def live_ids(node: Daemon) -> set[str]:
    return {n["uuid"] for n in node.nodes(all=True) if n.get("status") == "online"}


async def scenario(node: Daemon, base: str) -> tuple[bool, bool, str]:
    loop = asyncio.get_running_loop()
    peers = await start_swim_peers(3, [f"{base}.{170 + i}" for i in range(3)], TOKEN)
    attacker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    attacker.bind((f"{base}.201", 0))
    me = str(uuid.uuid4())
    try:
        for p in peers:
            p.membership.start(seeds=[f"{node.ip}:{node.port}"])
        end = loop.time() + 20
        while len(await loop.run_in_executor(None, live_ids, node)) < 3:
            assert loop.time() < end, "the members did not join"
            await asyncio.sleep(0.2)
        victim, hijacked, refuter = peers
        # two lies at the highest incarnation the wire takes: the victim is dead, and the other
        # member lives at the attacker's address; and one an honest member can outbid
        lies = [["d", victim.id, MAX_INC - 1, me],
                ["a", hijacked.id, MAX_INC - 1, f"{base}.201:{attacker.getsockname()[1]}"],
                ["d", refuter.id, MAX_INC_JUMP, me]]
        attacker.sendto(signed(["g", lies], me), (node.ip, node.port))
        # each member hears the lie about itself within a few gossip rounds and refutes it; the
        # daemon must believe the refutation. Once the refuter has outbid its lie (heard from the
        # daemon, so the daemon took all three), the other two get as long again to come right.
        async def state() -> tuple[set[str], dict]:
            ids = await loop.run_in_executor(None, live_ids, node)
            listed = await loop.run_in_executor(None, node.api, "GET", "/nodes?all=true")
            return ids, next((n for n in listed["nodes"] if n["uuid"] == hijacked.id), {})

        end = loop.time() + 20
        while True:
            ids, where = await state()
            if (refuter.id in ids and refuter.membership.inc > MAX_INC_JUMP) or loop.time() > end:
                break
            await asyncio.sleep(0.3)
        assert refuter.id in ids and refuter.membership.inc > MAX_INC_JUMP, "a lie the member could refute stuck"
        end = loop.time() + 10
        while not (victim.id in ids and hijacked.id in ids and f"{base}.201" not in json.dumps(where)):
            if loop.time() > end:
                break
            await asyncio.sleep(0.3)
            ids, where = await state()
        return victim.id in ids, hijacked.id in ids, json.dumps(where)
    finally:
        attacker.close()
        stop_all(peers)


def test_a_claim_at_the_last_incarnation_cannot_silence_or_take_over_a_member(cluster):
    """Found: an update's incarnation was only bounded by the wire's MAX_INC, so a dead (or alive
    elsewhere) claim at MAX_INC - 1 left the member no incarnation to refute it with: its refutation
    at MAX_INC failed every node's decoder, which dropped the whole datagram it rode in, so the
    member stayed dead (or the attacker's address stayed its address) for good."""
    base = cluster.ip(0).rsplit(".", 1)[0]
    node = cluster.add({"cluster_token": TOKEN, "peer_cidrs": [f"{base}.0/24"], "cluster": {"full_mesh_max": 2}},
                       peers=[])
    victim_alive, hijacked_alive, hijacked_entry = asyncio.run(scenario(node, base))
    print(f"\nvictim alive: {victim_alive}; hijacked member: {hijacked_entry}")
    assert victim_alive, "a member declared dead by a forged claim stayed dead"
    assert hijacked_alive and f"{base}.201" not in hijacked_entry, hijacked_entry


def test_oversized_malformed_and_mistyped_datagrams_are_dropped_whole(cluster):
    """Already safe (untested on a daemon): signed datagrams over the size limit, not JSON, of the
    wrong shape, or with a bad update among good ones add no member, leave no traceback, and the
    next correct join is heard as before."""
    base = cluster.ip(0).rsplit(".", 1)[0]
    node = cluster.add({"cluster_token": TOKEN, "peer_cidrs": [f"{base}.0/24"]}, peers=[])
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((f"{base}.202", 0))
    me = f"{base}.202:{sock.getsockname()[1]}"
    target = (node.ip, node.port)

    def members() -> int:
        return node.api("GET", "/stats")["cluster"]["members"]

    def join(mid: str, pad: int = 0) -> list:
        return ["j", ["a", mid, 0, me + " " * pad]]
    try:
        before = wait_until(lambda: node.api("GET", "/stats")["cluster"].get("datagrams"), 10,
                            what="the membership transport to be up")
        a, b = str(uuid.uuid4()), str(uuid.uuid4())
        bad = [
            signed(["g", [["a", a, 0, me]] * 30], a),  # over 1200 bytes
            b"BSW1m" + a.encode() + (1).to_bytes(8, "big") + b"\x00" * 32 + b"{not json",
            signed(["j", ["a", a, "0", me]], a),  # incarnation as a string
            signed(["j", ["a", a, -1, me]], a),
            signed(["j", ["x", a, 0, me]], a),
            signed(["g", [["a", b, 0, me], ["a", a, 0, me, "extra"]]], a),  # one bad update: none taken
            signed(["j", ["a", a, 0, "[" * 120]], a),
            signed(["p", 1, "x" * 65, []], a),  # a target id over its length
        ]
        for data in bad:
            sock.sendto(data, target)
        time.sleep(1.0)
        assert members() == 1
        after = node.api("GET", "/stats")["cluster"]["datagrams"]
        print(f"\ndatagram counters before {before}, after {after}")
        assert after.get("refused", 0) > before.get("refused", 0)  # the oversized one, at least
        sock.setblocking(False)
        while True:  # what the junk got back (a join, even one with a bad address, gets the state)
            try:
                sock.recv(65536)
            except BlockingIOError:
                break
        sock.setblocking(True)
        sock.settimeout(10)
        c = str(uuid.uuid4())
        sock.sendto(signed(join(c), c), target)  # the positive control: the daemon answers a join
        answer = json.loads(sock.recv(65536)[81:])  # magic, channel, sender, sequence, MAC
        assert answer[0] == "y" and c in json.dumps(answer), answer
        assert node.tracebacks("beiran/peer/") == []
    finally:
        sock.close()


def test_replay_memory_holds_only_what_the_clock_window_still_takes(monkeypatch):
    """Found (measured: 17 KiB per sender, ~340 MiB at MAX_SENDERS): the replay memory kept up to
    256 sequence numbers per sender and every sender until 20,000 others pushed it out, so a token
    holder making up senders (and, slowly, a long-running large cluster's honest members) grew it
    without regard to the clock window, outside which nothing can be replayed anyway. Now a sender's
    numbers older than the window and senders quiet for longer than it are forgotten; a replay
    inside the window is still refused. In-process: the real transport's `open`."""
    from beiran.peer import transport as tr

    clock = {"now": 1_900_000_000.0, "mono": 1000.0}
    monkeypatch.setattr(tr.time, "time", lambda: clock["now"])
    monkeypatch.setattr(tr.time, "monotonic", lambda: clock["mono"])
    t = tr.DatagramTransport(str(uuid.uuid4()), TOKEN, lambda host: True, lambda *a: None)

    def datagram(sender: str, at: float) -> bytes:
        head = b"BSW1m" + sender.encode() + int(at * 1e6).to_bytes(8, "big")
        body = b'["g",[]]'
        key = hmac.new(TOKEN.encode(), b"beiran swim v1", hashlib.sha256).digest()
        return head + hmac.new(key, head + body, hashlib.sha256).digest() + body

    made_up = [str(uuid.uuid4()) for _ in range(2000)]
    for s in made_up:
        for k in range(20):
            assert t.open(datagram(s, clock["now"] - k * 1e-3), "127.0.0.1") is not None
    first = datagram(made_up[0], clock["now"])
    assert t.open(first, "127.0.0.1") is None  # a replay inside the window
    # one honest sender, a datagram every half second for 100 s
    honest = str(uuid.uuid4())
    for _ in range(200):
        clock["now"] += 0.5
        clock["mono"] += 0.5
        assert t.open(datagram(honest, clock["now"]), "127.0.0.1") is not None
    t.open(datagram(str(uuid.uuid4()), clock["now"]), "127.0.0.1")  # a newcomer: the quiet are forgotten
    remembered = sum(len(r.seen) for r in t._replay.values())
    print(f"\nsenders remembered {len(t._replay)}, sequence numbers {remembered}")
    assert len(t._replay) <= 2 and remembered <= 70  # the honest one's last 30 s, and the newcomer
