"""Docker across nodes above `[cluster] full_mesh_max` (no peer websockets): `docker preheat --nodes
all` reaches every member, and `docker images/layers --all` list what other members hold, through
the core's peer calls and membership (beiran/peer/calls.py)."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from beiran_testkit.daemon import wait_until
from beiran_testkit.registry import beiran, docker_config


@pytest.mark.cluster
@pytest.mark.slow
def test_preheat_and_cluster_listings_work_in_swim_mode(cluster, registry, test_images):
    cfg = {**docker_config(registry), "cluster_token": "docker-swim", "cluster": {"full_mesh_max": 3}}
    nodes = cluster.start(4, config=cfg)
    for node in nodes:
        wait_until(lambda node=node: (c := node.api("GET", "/nodes")["cluster"])["mode"] == "swim"
                   and c["members"] == 4, 30, interval=0.2, what=f"{node.name} in swim mode with 4 members")
    n1, n2 = nodes[:2]
    img = test_images.img
    summary = json.loads(beiran(n1, "docker", "preheat", f"{registry.name}/test/img:v1", "--nodes", "all",
                                "--json").stdout)
    assert summary["failed"] == [] and {r["node"] for r in summary["nodes"]} == {n.uuid for n in nodes}, summary
    for n in nodes:
        for b in img.blobs:
            assert n.blob(b.digest) == test_images.layout.path_of(b.digest).read_bytes(), (n.name, b.digest)
    assert registry.proxy.blob_gets() == Counter({b.digest: 1 for b in img.blobs})

    beiran(n2, "docker", "pull", "test/zstd:v1", "--no-load", "--no-progress")
    everything = json.loads(beiran(n1, "docker", "images", "--all", "--json").stdout)["images"]
    where = {i["ref"]: i["nodes"] for i in everything}
    assert where.get(f"{registry.name}/test/zstd:v1") == [n2.uuid], where
    layers = {x["digest"]: x for x in json.loads(beiran(n1, "docker", "layers", "--all", "--json").stdout)}
    for layer in test_images.zstd.layers:
        assert n2.uuid in layers[layer.digest]["nodes"], layers.get(layer.digest)


ACCEPT = {"Accept": "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, "
                    "application/vnd.docker.distribution.manifest.v2+json"}


@pytest.mark.cluster
@pytest.mark.slow
def test_registry_down_the_offline_quorum_asks_members_in_swim_mode(cluster, registry, test_images):
    """With the registry down, a node that never saw a tag gets the answer its peers agree on,
    though no websocket is open (the quorum is asked among the members that run docker)."""
    cfg = {**docker_config(registry), "cluster": {"full_mesh_max": 3}}
    nodes = cluster.start(4, config=cfg)
    for node in nodes:
        wait_until(lambda node=node: (c := node.api("GET", "/nodes")["cluster"])["mode"] == "swim"
                   and c["members"] == 4, 30, interval=0.2, what=f"{node.name} in swim mode with 4 members")
    *knowing, fresh = nodes
    path = "/v2/test/img/manifests/v1"
    for node in knowing:
        status, _, body = node.tcp("GET", path, headers=ACCEPT)
        assert status == 200 and body == test_images.img.manifest_bytes
    registry.stop()
    status, headers, body = fresh.tcp("GET", path, headers=ACCEPT)
    assert status == 200 and body == test_images.img.manifest_bytes, (status, body[:200])
    agreed = headers.get("X-Beiran-Offline", "")
    assert agreed.startswith("agreed; peers=") and len(agreed.split("=")[1].split(",")) >= 2, agreed
