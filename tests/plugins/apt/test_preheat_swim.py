"""`beiran apt preheat --nodes all` above `[cluster] full_mesh_max`: no peer websockets, so the
nodes that run apt are learned from membership and their signed `/info` (beiran/peer/calls.py), and
they are asked over signed `POST /peer/rpc/preheat`; the .debs still leave the archive once; with
the archive down, a node that never saw it takes the index files from a member that did."""

from __future__ import annotations

import json

import pytest

from beiran_testkit.aptclient import OTHER_PLUGINS, add_nodes, beiran, client_for
from beiran_testkit.daemon import wait_until

TOKEN = "apt-preheat-swim"
SWIM = {"cluster_token": TOKEN, "cluster": {"full_mesh_max": 3}}


@pytest.mark.cluster
@pytest.mark.slow
def test_preheat_all_in_swim_mode_reaches_every_apt_node_and_no_other(cluster, repo, server, tmp_path):
    nodes = add_nodes(cluster, 4, repo, extra=[SWIM] * 4)
    n1 = nodes[0]
    no_apt = cluster.add({**SWIM, "plugins": {p: {"enabled": False} for p in [*OTHER_PLUGINS, "apt"]}})
    everyone = [*nodes, no_apt]
    for node in everyone:
        wait_until(lambda node=node: (c := node.api("GET", "/nodes")["cluster"])["mode"] == "swim"
                   and c["members"] == 5, 30, interval=0.2, what=f"{node.name} in swim mode with 5 members")
    client_for(tmp_path, "c1", n1, repo, server.url).update()  # only node 1 learns the archive
    names = ["hello", "libhello"]
    pkgs = [repo.packages[n] for n in names]

    out = beiran(n1, "apt", "preheat", *names, "--nodes", "all", "--json", timeout=120)
    summary = json.loads(out.stdout)
    assert summary["failed"] == [] and {r["node"] for r in summary["nodes"]} == {n.uuid for n in nodes}, summary
    for n in nodes:
        for p in pkgs:
            assert n.blob(p.digest) == p.data, (n.name, p.name)
    status, _, _ = no_apt.request("HEAD", f"/blobs/{pkgs[0].digest}")
    assert status == 404
    assert server.debs_served() == {p.filename: 1 for p in pkgs}

    # the archive goes away: node 3 never talked to it, and gets the index files from a member's copy
    server.stop()
    c3 = client_for(tmp_path, "c3", nodes[2], repo, server.url)
    c3.update()
    c3.download("hello")
    assert c3.debs() == repo.expected(*names)
