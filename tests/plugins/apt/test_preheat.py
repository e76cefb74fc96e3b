"""`beiran apt preheat PKG[=VERSION]...`: after one node learned the archive's indexes, the chosen
nodes hold the .debs (each leaving the archive once for the whole cluster), and apt-get on another
node then downloads them through its own proxy with no archive request at all."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from beiran_testkit.aptclient import OTHER_PLUGINS, add_nodes, beiran, client_for


def _holds(node, digest: str) -> bool:
    status, headers, _ = node.request("HEAD", f"/blobs/{digest}")
    return status == 200 and headers.get("X-Beiran-State") == "complete"


@pytest.mark.cluster
@pytest.mark.slow
def test_preheat_all_puts_the_debs_on_every_node_and_apt_get_elsewhere_costs_the_archive_nothing(
        cluster, repo, server, tmp_path):
    nodes = add_nodes(cluster, 4, repo, extra=[{"cluster_token": "apt-preheat"}] * 4)
    n1, n2, n3, n4 = nodes
    # and a node without the apt plugin: "all" means the nodes that run apt
    no_apt = cluster.add({"cluster_token": "apt-preheat",
                          "plugins": {p: {"enabled": False} for p in [*OTHER_PLUGINS, "apt"]}})
    cluster.wait_connected([*nodes, no_apt])
    client_for(tmp_path, "c1", n1, repo, server.url).update()  # only node 1 learns the archive
    names = ["hello", "libhello"]
    pkgs = [repo.packages[n] for n in names]
    assert not any(_holds(n, p.digest) for n in nodes for p in pkgs)

    out = beiran(n1, "apt", "preheat", *names, "--nodes", "all", "--json", timeout=120)
    summary = json.loads(out.stdout)
    assert summary["failed"] == [] and {r["node"] for r in summary["nodes"]} == {n.uuid for n in nodes}, summary
    assert sorted(summary["packages"]) == ["hello=1.0", "libhello=1.0"]
    for n in nodes:
        for p in pkgs:
            assert _holds(n, p.digest), (n.name, p.name)
            assert n.blob(p.digest) == p.data
    assert not any(_holds(no_apt, p.digest) for p in pkgs)
    listed = {r["package"]: r for r in json.loads(beiran(n1, "apt", "packages", "--json").stdout)}
    assert listed["hello"]["via"] == "preheat" and listed["hello"]["digest"] == pkgs[0].digest
    assert server.debs_served() == {p.filename: 1 for p in pkgs}
    assert all(server.count("/" + p.filename) == 1 for p in pkgs)
    assert summary["sources"]["origin"] == sum(len(p.data) for p in pkgs)
    assert summary["sources"]["peer"] == 3 * sum(len(p.data) for p in pkgs)  # nodes 2-4: from the cluster

    # apt-get on node 3, through its own proxy: the index from the cluster, the .debs from its store
    c3 = client_for(tmp_path, "c3", n3, repo, server.url)
    c3.update()
    c3.download("hello")
    assert c3.debs() == repo.expected(*names)
    assert server.debs_served() == {p.filename: 1 for p in pkgs}

    # the table form; preheating what every node holds costs the archive nothing
    again = beiran(n1, "apt", "preheat", "hello", "--nodes", ",".join(n.uuid[:8] for n in (n2, n4)))
    assert "Preheated hello on 2 of 2 nodes" in again.stdout, again.stdout
    assert n2.uuid[:8] in again.stdout and "NODE" in again.stdout
    assert server.debs_served() == {p.filename: 1 for p in pkgs}


@pytest.mark.cluster
def test_preheat_picks_the_newest_or_the_named_version_and_names_unknown_packages(cluster, repo, server,
                                                                                 tmp_path):
    old = repo.packages["pkg05"]
    new = repo.add("pkg05", "2.0", payload=4096, seed=55)
    repo.build()
    (n1,) = add_nodes(cluster, 1, repo)

    # nothing learned yet: one line naming the package and what to do, no traceback
    res = beiran(n1, "apt", "preheat", "pkg05", check=False)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and "pkg05" in err[0] and "apt-get update" in err[0], res.stderr

    client_for(tmp_path, "c1", n1, repo, server.url).update()
    got = json.loads(beiran(n1, "apt", "preheat", "pkg05", "--json").stdout)
    assert got["packages"] == ["pkg05=2.0"] and got["failed"] == []
    assert n1.blob(new.digest) == new.data
    got = json.loads(beiran(n1, "apt", "preheat", "pkg05=1.0", "--json").stdout)
    assert got["packages"] == ["pkg05=1.0"]
    assert n1.blob(old.digest) == old.data

    res = beiran(n1, "apt", "preheat", "hello", "no-such-pkg", "pkg05=9.9", check=False)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    err = res.stderr.strip().splitlines()
    assert len(err) == 1, res.stderr
    assert "no-such-pkg" in err[0] and "pkg05=9.9 (known versions: 1.0, 2.0)" in err[0] and "apt-get update" in err[0]
    assert not _holds(n1, repo.packages["hello"].digest)  # nothing started for the known one either

    res = beiran(n1, "apt", "preheat", "Bad_Name!", check=False)
    assert res.returncode == 1 and "not a package name" in res.stderr and "Traceback" not in res.stderr
    assert "--nodes" in beiran(n1, "apt", "preheat", "--help").stdout


@pytest.mark.cluster
def test_a_peers_preheat_naming_an_archive_this_node_never_saw_contacts_nothing(cluster, repo, tmp_path):
    """A peer (with the token) asks a node to preheat a .deb from an archive the node never saw:
    the node refuses to reach it, reports the failure, and the decoy archive gets no connection."""
    from beiran_testkit.decoy import Decoy
    from beiran_testkit.fakepeer import RPCPeer

    token = "apt-preheat-attack"
    (node,) = add_nodes(cluster, 1, repo, extra=[{"cluster_token": token}])
    decoy = Decoy("127.0.0.9")
    digest = "sha256:" + "cd" * 32
    try:
        async def attack() -> tuple[dict, dict]:
            peer = await RPCPeer(node.url, token=token).connect()
            try:
                started = await peer.rpc("preheat", blobs=[{
                    "digest": digest, "size": 4096,
                    "source": {"plugin": "apt", "base": f"http://{decoy.address}/debian/",
                               "path": "pool/main/s/secret/secret_1.0_all.deb"}}])
                for _ in range(100):
                    progress = await peer.rpc("progress", digests=[digest])
                    if progress.get("r", {}).get(digest, {}).get("state") not in (None, "downloading"):
                        break
                    await asyncio.sleep(0.1)
                return started, progress
            finally:
                await peer.close()
        started, progress = asyncio.run(attack())
        time.sleep(1)
        assert started["t"] == "rpc_result", started
        assert progress["r"][digest]["state"] == "failed", progress
        assert "never seen that archive" in progress["r"][digest]["error"], progress
        assert decoy.connections == 0
        assert not _holds(node, digest)
    finally:
        decoy.close()


def test_newest_is_dpkgs_order_and_specs_are_checked():
    from beiran.errors import BadRequest
    from beiran_plugins.apt.preheat import Spec, parse_spec, pick

    rows = [{"version": v} for v in ("1.0", "1.0~rc1", "2.0", "1:0.9", "10.0")]
    assert pick(Spec("x", None), rows) == {"version": "1:0.9"}  # an epoch beats any version without one
    assert pick(Spec("x", None), rows[:2]) == {"version": "1.0"}  # ~ sorts before the release
    assert pick(Spec("x", None), [rows[2], rows[4]]) == {"version": "10.0"}  # not string order
    assert pick(Spec("x", "1.0~rc1"), rows) == {"version": "1.0~rc1"}
    assert pick(Spec("x", "3.0"), rows) is None
    assert parse_spec("libc6=2.36-9+deb12u9") == Spec("libc6", "2.36-9+deb12u9")
    for bad in ("", "Hello", "a b", "x=", "x=1 2", "../etc", 3):
        with pytest.raises(BadRequest):
            parse_spec(bad)
