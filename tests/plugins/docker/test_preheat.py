"""`beiran docker preheat`: chosen nodes fetch an image before it is needed, each blob leaving the
registry once for the whole cluster; peers refuse a preheat in a cluster without a token."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from beiran_testkit.registry import beiran, docker_config

pytestmark = pytest.mark.cluster


def _holds(node, digest: str) -> bool:
    status, headers, _ = node.request("HEAD", f"/blobs/{digest}")
    return status == 200 and headers.get("X-Beiran-State") == "complete"


def test_preheat_all_puts_every_blob_on_every_node_and_the_origin_serves_each_once(cluster, registry,
                                                                                 test_images):
    nodes = cluster.start(4, config={**docker_config(registry), "cluster_token": "preheat-secret"})
    cluster.wait_connected()
    img = test_images.img
    assert not any(_holds(n, b.digest) for n in nodes for b in img.blobs)

    out = beiran(nodes[0], "docker", "preheat", f"{registry.name}/test/img:v1", "--nodes", "all", "--json")
    summary = json.loads(out.stdout)
    assert summary["failed"] == [] and len(summary["nodes"]) == 4, summary
    assert {r["node"] for r in summary["nodes"]} == {n.uuid for n in nodes}
    for n in nodes:
        for b in img.blobs:
            assert _holds(n, b.digest), (n.name, b.digest)
            assert n.blob(b.digest) == test_images.layout.path_of(b.digest).read_bytes()
    assert registry.proxy.blob_gets() == Counter({b.digest: 1 for b in img.blobs})
    assert summary["sources"]["origin"] == sum(b.size for b in img.blobs)

    # the table form, and a second preheat of the same image costs the origin nothing
    again = beiran(nodes[1], "docker", "preheat", f"{registry.name}/test/img:v1", "--nodes",
                   ",".join(n.uuid[:8] for n in nodes[2:]))
    assert "Preheated" in again.stdout and "on 2 of 2 nodes" in again.stdout, again.stdout
    assert registry.proxy.blob_gets() == Counter({b.digest: 1 for b in img.blobs})


def test_preheat_is_refused_by_peers_of_a_cluster_without_a_token(cluster, registry, test_images):
    n1, n2 = cluster.start(2, config=docker_config(registry))
    cluster.wait_connected()
    res = beiran(n1, "docker", "preheat", f"{registry.name}/test/img:v1", check=False)
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    err = res.stderr.strip().splitlines()[-1]
    assert n2.uuid[:8] in err and "cluster_token" in err, res.stderr
    assert "preheating" not in n2.log()  # (it may still hold blobs it fetched as their rendezvous owner)
    assert all(_holds(n1, b.digest) for b in test_images.img.blobs)  # this node did as it was told


def test_preheat_names_an_unknown_node(cluster, registry):
    (n1,) = cluster.start(1, config=docker_config(registry))
    res = beiran(n1, "docker", "preheat", f"{registry.name}/test/img:v1", "--nodes", "deadbeef", check=False)
    assert res.returncode == 1 and "deadbeef is not this node or an online peer" in res.stderr
    assert "Traceback" not in res.stderr
