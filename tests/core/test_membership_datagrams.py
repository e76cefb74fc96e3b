"""Membership never relies on IP fragmentation: a real daemon's datagrams, a full member list
included, each fit 1200 bytes. The daemon is joined by 30 real SWIM members running in this
process on their own UDP sockets (beiran_testkit.swimpeers), which record every datagram that
reaches them before any check."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from beiran.peer.membership import ALIVE
from beiran_testkit.daemon import Daemon
from beiran_testkit.swimpeers import LIMIT, start_swim_peers, stop_all

pytestmark = pytest.mark.cluster
TOKEN = "membership-datagram-size-test-token"
MEMBERS = 30


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
    daemon = f"{node.ip}:{node.port}"
    peers = await start_swim_peers(MEMBERS, [f"{base}.{150 + i}" for i in range(MEMBERS)], TOKEN)
    try:
        for p in peers:
            p.membership.start(seeds=[daemon])  # each joins through the daemon: it answers with its list
            await asyncio.sleep(0.02)

        async def converged() -> bool:
            return (all(sum(x.state == ALIVE for x in p.membership.members.values()) == MEMBERS + 1 for p in peers)
                    and await daemon_members(node) == MEMBERS + 1)

        def views() -> str:
            seen = [sorted(Counter(x.state for x in p.membership.members.values()).items()) for p in peers]
            return f"all 31 members to know each other; their views: {seen}"
        await until(converged, 30, views)

        # push-pull: a member whose view differs asks the daemon to compare; the daemon answers with
        # its whole list, which no longer fits one datagram
        first = peers[0]
        before = len(first.sock.got)
        first.membership.send_msg(daemon, ["h", 0, 1], gossip=False)
        await asyncio.sleep(1.0)
        parts = [m for m in first.sock.messages(daemon, before) if m[0] == "y"]
        assert len(parts) >= 2, parts
        assert {u[1] for part in parts for u in part[1]} == {p.id for p in peers} | {node_id}

        sizes = [len(data) for p in peers for where, data in p.sock.got if where == daemon]
        assert len(sizes) > 30 and max(sizes) <= LIMIT, sorted(sizes)[-5:]
        # joins answered with a list of 24+ members came in several parts too, each within the limit
        assert any(len([m for m in p.sock.messages(daemon) if m[0] == "y"]) >= 2 for p in peers[24:])
        assert max(len(data) for p in peers for _, data in p.sock.got) <= LIMIT
    finally:
        stop_all(peers)


def test_full_member_list_of_31_travels_in_datagrams_of_at_most_1200_bytes_and_converges(cluster):
    base = cluster.ip(0).rsplit(".", 1)[0]
    node = cluster.add({"cluster_token": TOKEN, "peer_cidrs": [f"{base}.0/24"]}, peers=[])
    asyncio.run(scenario(node, base, node.api("GET", "/info")["uuid"]))
