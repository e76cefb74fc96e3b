"""Membership never relies on IP fragmentation: a real daemon's datagrams, a full member list
included, each fit 1200 bytes. The daemon is joined by 30 real SWIM members running in this
process on their own UDP sockets (beiran.peer.membership over beiran.peer.transport), which record
the size of every datagram that reaches them before any check."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections import Counter
from functools import partial
from typing import Any

import pytest

from beiran.peer.membership import ALIVE, Membership, SwimConfig
from beiran.peer.transport import DatagramTransport
from beiran_testkit.daemon import Daemon

pytestmark = pytest.mark.cluster
TOKEN = "membership-datagram-size-test-token"
MEMBERS = 30
LIMIT = 1200  # bytes of UDP payload: under IPv6's minimum path MTU with its headers
HEADER = 4 + 1 + 36 + 8 + 32  # magic, channel, sender, sequence, MAC (transport.py)


class Recording(DatagramTransport):
    """A member's socket that keeps every datagram it was sent, by source address."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.got: list[tuple[str, bytes]] = []

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.got.append((f"{addr[0]}:{addr[1]}", data))
        super().datagram_received(data, addr)


def state_parts(got: list[tuple[str, bytes]], src: str) -> list[list[Any]]:
    """The full-state messages ([y, updates]) among datagrams from `src`."""
    msgs = [json.loads(data[HEADER:]) for where, data in got if where == src and data[4:5] == b"m"]
    return [m for m in msgs if m[0] == "y"]


async def daemon_members(node: Daemon) -> int:
    stats = await asyncio.get_running_loop().run_in_executor(None, node.api, "GET", "/stats")
    return int(stats["cluster"]["members"])


async def until(cond: Any, timeout: float, what: Any) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not await cond():
        assert loop.time() < end, f"timed out waiting for {what()}"
        await asyncio.sleep(0.1)


async def scenario(node: Daemon, base: str, node_id: str) -> None:
    loop = asyncio.get_running_loop()
    daemon = f"{node.ip}:{node.port}"
    socks: list[Recording] = []
    members: list[Membership] = []
    try:
        for i in range(MEMBERS):
            mid, box = str(uuid.uuid4()), []
            _, sock = await loop.create_datagram_endpoint(
                lambda mid=mid, box=box: Recording(mid, TOKEN, lambda host: True,
                                                   lambda ch, sender, src, data, box=box: box[0].on_message(src, data)),
                local_addr=(f"{base}.{150 + i}", 0))
            addr = "{}:{}".format(*sock.transport.get_extra_info("sockname")[:2])
            cfg = SwimConfig(max_packet=LIMIT - HEADER, sync_interval=5.0)  # as the daemon's, at this size
            m = Membership(mid, addr, partial(sock.send, b"m"), loop, cfg, rng=random.Random(i))
            box.append(m)
            socks.append(sock)
            members.append(m)
        for m in members:
            m.start(seeds=[daemon])  # each joins through the daemon: it answers with its member list
            await asyncio.sleep(0.02)

        async def converged() -> bool:
            return (all(len([1 for x in m.members.values() if x.state == ALIVE]) == MEMBERS + 1 for m in members)
                    and await daemon_members(node) == MEMBERS + 1)
        def views() -> str:
            seen = [sorted(Counter(x.state for x in m.members.values()).items()) for m in members]
            return f"all 31 members to know each other; their views: {seen}"
        await until(converged, 30, views)

        # push-pull: a member whose view differs asks the daemon to compare; the daemon answers with
        # its whole list, which no longer fits one datagram
        first = members[0]
        before = len(socks[0].got)
        first.send_msg(daemon, ["h", 0, 1], gossip=False)
        await asyncio.sleep(1.0)
        parts = state_parts(socks[0].got[before:], daemon)
        assert len(parts) >= 2, parts
        assert {u[1] for p in parts for u in p[1]} == {m.id for m in members} | {node_id}

        sizes = [len(data) for s in socks for where, data in s.got if where == daemon]
        assert len(sizes) > 30 and max(sizes) <= LIMIT, sorted(sizes)[-5:]
        # joins answered with a list of 24+ members came in several parts too, each within the limit
        joined = [s for s in socks[24:] if len(state_parts(s.got, daemon)) >= 2]
        assert joined, "no join was answered with more than one part"
        everyone = [len(data) for s in socks for _, data in s.got]
        assert max(everyone) <= LIMIT
    finally:
        for m in members:
            m.stop()
        for s in socks:
            s.close()


def test_full_member_list_of_31_travels_in_datagrams_of_at_most_1200_bytes_and_converges(cluster):
    base = cluster.ip(0).rsplit(".", 1)[0]
    node = cluster.add({"cluster_token": TOKEN, "peer_cidrs": [f"{base}.0/24"]}, peers=[])
    asyncio.run(scenario(node, base, node.api("GET", "/info")["uuid"]))
