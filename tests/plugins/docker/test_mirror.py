"""The registry mirror with real clients: skopeo and containerd pulling through Beiran nodes from
Debian's docker-registry, with the origin's requests counted."""

from __future__ import annotations

import concurrent.futures
import json
from collections import Counter

import pytest

from beiran_testkit.containerd import Containerd
from beiran_testkit.daemon import wait_until
from beiran_testkit.registry import beiran, docker_config, mirror_of, oci_error, skopeo_copy, tree_files

pytestmark = pytest.mark.cluster


def _pull(registry, node, tmp_path, name, ref="test/img:v1", extra=None):
    conf = registry.registries_conf(tmp_path / f"{name}.conf", mirror_of(node))
    out = tmp_path / name
    res = skopeo_copy(f"docker://{registry.name}/{ref}", f"dir:{out}", conf, extra)
    assert res.returncode == 0, res.stderr
    return out


def test_node2_skopeo_and_containerd_get_every_blob_from_node1_not_the_origin(cluster, registry, test_images,
                                                                              tmp_path):
    """Must show 1."""
    n1, n2 = cluster.start(2, config=docker_config(registry))
    img = test_images.img
    out1 = _pull(registry, n1, tmp_path, "n1")
    first = registry.proxy.blob_gets()
    assert set(first) == {b.digest for b in img.blobs}, "node 1's pull went through its mirror"
    assert all(n == 1 for n in first.values())

    out2 = _pull(registry, n2, tmp_path, "n2")
    ctd = Containerd().start()
    try:
        hosts = ctd.hosts_dir(registry.name, mirror_of(n2))
        ctd.pull(f"{registry.name}/test/img:v1", hosts_dir=hosts)
        for blob in [img.manifest, *img.blobs]:
            assert ctd.blob(blob.digest) == test_images.layout.path_of(blob.digest).read_bytes()
    finally:
        ctd.cleanup()
    assert registry.proxy.blob_gets() == first, "the origin served no blob for node 2"
    assert tree_files(out1) == tree_files(out2)
    assert (out2 / "manifest.json").read_bytes() == img.manifest_bytes
    for blob in img.blobs:
        assert (out2 / blob.digest.split(":")[1]).read_bytes() == test_images.layout.path_of(blob.digest).read_bytes()


def test_four_nodes_pull_the_same_cold_image_at_once_and_each_blob_leaves_the_origin_once(cluster, registry,
                                                                                         test_images, tmp_path):
    """Must show 2 (with a zstd layer)."""
    nodes = cluster.start(4, config=docker_config(registry))
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda i: _pull(registry, nodes[i], tmp_path, f"n{i}", "test/zstd:v1"), range(4)))
    assert registry.proxy.blob_gets() == Counter({b.digest: 1 for b in test_images.zstd.blobs})
    first = tree_files(outs[0])
    assert all(tree_files(o) == first for o in outs[1:])
    assert (outs[0] / "manifest.json").read_bytes() == test_images.zstd.manifest_bytes


def test_with_the_origin_down_node2_still_pulls_by_tag_and_by_digest(cluster, registry, test_images, tmp_path):
    """Must show 3 (Docker media types). Node 3 never saw the tag: two peers agreeing answer it
    (one peer alone never does: tests/plugins/docker/test_security_offline.py)."""
    n1, n_other, n2 = cluster.start(3, config=docker_config(registry))
    image = test_images.docker
    _pull(registry, n1, tmp_path, "n1", "test/docker:v1")
    _pull(registry, n_other, tmp_path, "n_other", "test/docker:v1")
    registry.stop()
    by_tag = _pull(registry, n2, tmp_path, "tag", "test/docker:v1")
    by_digest = _pull(registry, n2, tmp_path, "digest", f"test/docker@{image.manifest.digest}")
    for out in (by_tag, by_digest):
        assert (out / "manifest.json").read_bytes() == image.manifest_bytes
        for blob in image.blobs:
            assert (out / blob.digest.split(":")[1]).read_bytes() == \
                test_images.layout.path_of(blob.digest).read_bytes()
    assert "offline answer (docker): answering" in n2.log() and "agreed by 2 peers" in n2.log()
    # a tag nobody has seen cannot be answered: an error the client can fall back on, quickly
    status, _, body = n2.tcp("GET", "/v2/test/img/manifests/v1")
    assert status == 502 and oci_error(body) == "UNAVAILABLE"


def test_multi_arch_index_is_served_and_cli_pull_picks_the_platform(cluster, registry, test_images, tmp_path):
    """Must show 4."""
    (n1,) = cluster.start(1, config=docker_config(registry))
    index = test_images.layout.path_of(test_images.multi_index.digest).read_bytes()
    status, headers, body = n1.tcp("GET", "/v2/test/multi/manifests/v1",
                                   headers={"Accept": "application/vnd.oci.image.index.v1+json"})
    assert status == 200 and body == index
    assert headers["Content-Type"] == "application/vnd.oci.image.index.v1+json"
    assert headers["Docker-Content-Digest"] == test_images.multi_index.digest
    assert int(headers["Content-Length"]) == len(index)
    for image in test_images.multi.values():
        status, headers, body = n1.tcp("GET", f"/v2/test/multi/manifests/{image.manifest.digest}")
        assert status == 200 and body == image.manifest_bytes
        assert headers["Content-Type"] == "application/vnd.oci.image.manifest.v1+json"
    # a Docker manifest list keeps its media type too
    status, headers, body = n1.tcp("GET", "/v2/test/dockerlist/manifests/v1", headers={
        "Accept": "application/vnd.docker.distribution.manifest.list.v2+json"})
    assert status == 200 and body == test_images.layout.path_of(test_images.docker_list.digest).read_bytes()
    assert headers["Content-Type"] == "application/vnd.docker.distribution.manifest.list.v2+json"

    for platform, image in (("linux/arm64", test_images.multi["linux/arm64"]),
                            ("linux/arm/v7", test_images.multi["linux/arm/v7"])):
        out = beiran(n1, "docker", "pull", "test/multi:v1", "--platform", platform, "--no-load", "--json")
        summary = json.loads(out.stdout)
        assert summary["digest"] == image.manifest.digest and summary["platform"] == platform
        assert summary["index_digest"] == test_images.multi_index.digest
    info = n1.api("GET", f"/docker/images/{registry.name}/test/multi:v1/info")
    assert info["index_digest"] == test_images.multi_index.digest
    assert info["digest"] in {test_images.multi["linux/arm64"].manifest.digest,
                              test_images.multi["linux/arm/v7"].manifest.digest}
    for image in test_images.multi.values():
        have = {b["digest"] for b in n1.api("GET", "/blobs")["blobs"]}
        picked = image is not test_images.multi["linux/amd64"]
        assert ({b.digest for b in image.layers} <= have) == picked
    out = beiran(n1, "docker", "pull", "test/multi:v1", "--platform", "linux/s390x", check=False)
    assert out.returncode == 1 and "no image for linux/s390x" in out.stderr and len(out.stderr.splitlines()) == 1
    # skopeo through the mirror with an explicit architecture gets the same manifest
    out = _pull(registry, n1, tmp_path, "arm", "test/multi:v1", ["--override-arch", "arm64"])
    assert (out / "manifest.json").read_bytes() == test_images.multi["linux/arm64"].manifest_bytes


def test_a_manifest_fetch_prefetches_the_layers_peers_hold_and_nothing_from_the_origin(cluster, registry,
                                                                                      test_images):
    config = {**docker_config(registry), "fetch": {"origin_delegation": False}}
    n1, n2 = cluster.start(2, config=config)
    beiran(n1, "docker", "pull", "test/img:v1", "--no-load", "--no-progress")
    after_n1 = registry.proxy.blob_gets()
    wanted = {b.digest for b in test_images.img.blobs}

    def n2_knows_n1_holds_them() -> bool:
        view = {b["digest"]: b.get("nodes", {}) for b in n2.api("GET", "/blobs?all=true")["blobs"]}
        return all(view.get(d, {}).get(n1.uuid) == "complete" for d in wanted)
    wait_until(n2_knows_n1_holds_them, 10, what="node 1's holdings to reach node 2")
    status, _, _ = n2.tcp("GET", "/v2/test/img/manifests/v1")
    assert status == 200
    wait_until(lambda: wanted <= {b["digest"] for b in n2.api("GET", "/blobs")["blobs"]}, 20,
               what="node 2 to prefetch the image's blobs from node 1")
    assert registry.proxy.blob_gets() == after_n1
    # nobody holds test/zstd's layers: serving its manifest starts no prefetch (the decision is made
    # while the manifest is served), so the origin is not asked for blobs the client may already have
    status, _, _ = n2.tcp("GET", "/v2/test/zstd/manifests/v1")
    assert status == 200
    docker_status = next(p for p in n2.api("GET", "/status")["plugins"] if p["name"] == "docker")
    assert docker_status["prefetching"] == 0 and docker_status["prefetched"] == len(wanted)
    zstd_only = {b.digest for b in test_images.zstd.blobs} - wanted
    assert zstd_only and not zstd_only & set(registry.proxy.blob_gets())
    assert not zstd_only & {b["digest"] for b in n2.api("GET", "/blobs")["blobs"]}
