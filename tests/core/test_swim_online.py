"""Above `full_mesh_max` no peer websocket is open, yet the peers are there: `beiran_peers_online`
on a real daemon's /metrics counts the members it can reach (as `beiran node list` shows them), and
drops when one is declared dead. Members: real SWIM nodes in this process (beiran_testkit.swimpeers)."""

from __future__ import annotations

import asyncio
import re
import urllib.request

import pytest

from beiran_testkit.daemon import Daemon
from beiran_testkit.swimpeers import start_swim_peers, stop_all

pytestmark = pytest.mark.cluster
TOKEN = "swim-online-metric-test-token"


def peers_online(node: Daemon) -> float:
    with urllib.request.urlopen(node.url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    found = re.search(r"^beiran_peers_online (\S+)$", text, re.M)
    assert found, text[:2000]
    return float(found.group(1))


def listed_online(node: Daemon) -> int:
    return sum(1 for n in node.cli("node", "list", "--json") if n.get("status") == "online")


async def until(node: Daemon, cond, timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond(await loop.run_in_executor(None, node.api, "GET", "/stats")):
        assert loop.time() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


async def scenario(node: Daemon, base: str) -> list[tuple[float, int]]:
    loop = asyncio.get_running_loop()
    peers = await start_swim_peers(4, [f"{base}.{160 + i}" for i in range(4)], TOKEN)
    seen: list[tuple[float, int]] = []
    try:
        for p in peers:
            p.membership.start(seeds=[f"{node.ip}:{node.port}"])
        await until(node, lambda s: s["cluster"]["mode"] == "swim" and s["cluster"]["members"] == 5, 20,
                    "the daemon in swim mode with 5 members")
        seen.append(await loop.run_in_executor(None, lambda: (peers_online(node), listed_online(node))))
        peers[3].stop()  # a crash: the others declare it dead
        await until(node, lambda s: s["cluster"]["members"] == 4, 30, "the stopped member declared dead")
        seen.append(await loop.run_in_executor(None, lambda: (peers_online(node), listed_online(node))))
    finally:
        stop_all(peers)
    return seen


def test_peers_online_counts_live_members_above_full_mesh_max(cluster):
    base = cluster.ip(0).rsplit(".", 1)[0]
    node = cluster.add({"cluster_token": TOKEN, "peer_cidrs": [f"{base}.0/24"], "cluster": {"full_mesh_max": 2}},
                       peers=[])
    assert peers_online(node) == 0
    assert asyncio.run(scenario(node, base)) == [(4.0, 4), (3.0, 3)]
