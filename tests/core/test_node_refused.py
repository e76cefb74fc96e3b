"""A node that refuses this node shows in `beiran node list` (and --all, and --json) with why.

Found: `beiran node probe` of a node with another cluster token (or whose peer_cidrs leave this node
out) said so once, and then the node was nowhere: it never says hello, so it had no node record,
and `node list --all` did not list it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from beiran_testkit.daemon import Daemon, wait_until

pytestmark = pytest.mark.cluster


def probe(node: Daemon, address: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "beiran", "--socket", node.socket, "node", "probe", address],
                          capture_output=True, text=True, timeout=60)


def test_a_probed_node_that_refuses_this_node_is_listed_with_why(cluster):
    a = cluster.add(config={"cluster_token": "token-a"}, peers=None)
    other_token = cluster.add(config={"cluster_token": "token-b"}, peers=None)
    walled = cluster.add(config={"cluster_token": "token-a", "peer_cidrs": [f"{cluster.ip(5)}/32"]}, peers=None)
    for node, why in ((other_token, "refused our cluster token (HTTP 401)"),
                      (walled, "refused this node (HTTP 403)")):
        out = probe(a, node.url)
        assert out.returncode == 1 and why in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr

    rows = {n["url"]: n for n in a.cli("node", "list", "--all", "--json")}
    assert rows[other_token.url]["status"] == "refused: token", rows
    assert rows[walled.url]["status"] == "refused: peer_cidrs", rows
    for node in (other_token, walled):  # what its /info said, and how it was found
        assert rows[node.url]["uuid"] == node.uuid and rows[node.url]["found_by"] == ["probe"], rows[node.url]
    assert {n["url"] for n in a.cli("node", "list", "--json")} >= {other_token.url, walled.url}  # not "offline"
    assert a.cli("node", "info", other_token.uuid[:8], "--json")["status"] == "refused: token"

    table = a.cli("node", "list")
    print(table)
    lines = {node.url: next((x for x in table.splitlines() if node.url in x), "") for node in (other_token, walled)}
    assert "refused: token" in lines[other_token.url] and other_token.uuid in lines[other_token.url], table
    assert "refused: peer_cidrs" in lines[walled.url], table
    assert "set the same on every node" in table and "add this node's address there" in table

    # the operator sets the same token there: its next dial connects, and the row says online
    other_token.stop()
    other_token.config["cluster_token"] = "token-a"
    other_token.start()
    wait_until(lambda: a.entry(other_token)["status"] == "online", 30, what="the node to come online")
    rows = {n["url"]: n for n in a.cli("node", "list", "--all", "--json")}
    assert rows[other_token.url]["status"] == "online" and "refused" not in rows[other_token.url], rows
