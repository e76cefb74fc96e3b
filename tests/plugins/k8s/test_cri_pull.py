"""Must show 1 and 2: CRI PullImage through Beiran on two nodes (node 2's blobs from node 1, none
from the origin), and ListImages / ImageStatus / RemoveImage / ImageFsInfo as kubelet uses them."""

from __future__ import annotations

import json

import grpc
import pytest

from beiran_testkit.cri import dump
from beiran_testkit.daemon import wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def test_pull_on_node1_then_node2_reads_no_blob_from_origin(env):
    n1, n2 = env.nodes[0], env.nodes[1]
    ref, image = env.image(layers=3)
    proxy = env.registry.proxy
    proxy.reset()
    with n1.cri() as cri:
        image_id = cri.pull(ref)
    assert image_id == image.config.digest  # containerd names a CRI image by its config digest
    assert ref in n1.containerd.image_refs(), n1.containerd.ctr("images", "ls")
    first = proxy.blob_gets()
    assert first == {b.digest: 1 for b in image.blobs}, first  # each blob crossed the WAN once

    proxy.reset()
    with n2.cri() as cri:
        assert cri.pull(ref) == image_id
    listed = n2.containerd.ctr("images", "ls")
    assert ref in n2.containerd.image_refs(), listed
    assert image.manifest.digest in listed
    assert proxy.blob_gets() == {}, f"the origin served blobs for node 2: {proxy.blob_gets()}"
    for blob in image.blobs:  # node 2 holds them, verified, in its own store
        assert n2.daemon.api("GET", "/blobs")["blobs"], "node 2's store is empty"
        assert blob.digest in {b["digest"] for b in n2.daemon.api("GET", "/blobs")["blobs"]}


def test_list_status_remove_fsinfo(env):
    node = env.nodes[0]
    ref, image = env.image(layers=2, platforms=("arm64",))  # a multi-platform index
    repo, _, _tag = ref.rpartition(":")
    with node.cri() as cri:
        image_id = cri.pull(ref)

        listed = {im.id: im for im in cri.list()}
        assert image_id in listed
        im = listed[image_id]
        assert ref in im.repo_tags
        assert any(d.startswith(repo + "@sha256:") for d in im.repo_digests), dump(im)
        assert im.size > 0
        assert [i.id for i in cri.list(ref)] == [image_id]  # the filter kubelet uses

        by_tag = cri.status(ref)
        assert by_tag.image.id == image_id and not by_tag.info  # info only when verbose
        by_digest = cri.status(im.repo_digests[0])
        assert by_digest.image.id == image_id
        assert cri.status(image_id).image.id == image_id

        verbose = cri.status(ref, verbose=True)
        runtime_info = json.loads(verbose.info["info"])  # containerd's own, kept
        assert runtime_info["imageSpec"]["rootfs"]["diff_ids"]
        ours = json.loads(verbose.info["beiran"])  # merged in by Beiran
        assert ours["pulled_through_beiran"] is True
        assert ours["manifest"] == image.manifest.digest and ours["index"]
        assert {b["digest"] for b in ours["blobs"]} == {b.digest for b in image.blobs}
        assert all(b["local"] for b in ours["blobs"]) and ours["private"] is False

        absent = cri.status(ref.replace(":v", ":missing-v"))
        assert not absent.HasField("image")  # not an error: kubelet then pulls

        cri.remove(ref)
        assert not cri.status(ref).HasField("image")
        assert image_id not in {i.id for i in cri.list()}
        assert ref not in node.containerd.image_refs()
        cri.remove(ref)  # idempotent, as the spec says

        def usage():
            fs = cri.fs_info().image_filesystems
            return fs if fs and fs[0].used_bytes.value > 0 and fs[0].inodes_used.value > 0 else None
        fs = wait_until(usage, 15, what="ImageFsInfo with real usage figures")[0]
        assert fs.timestamp > 0
        assert fs.fs_id.mountpoint.startswith(str(node.containerd.base / "root")), dump(fs)


def test_pull_with_runtime_down_then_back(env):
    node = env.nodes[2]
    ref, _ = env.image(layers=1, size=1000)
    node.containerd.stop()
    try:
        with node.cri() as cri:
            for call in (lambda: cri.list(), lambda: cri.status(ref), lambda: cri.fs_info(), lambda: cri.pull(ref)):
                with pytest.raises(grpc.RpcError) as err:
                    call()
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
                assert "container runtime" in err.value.details() and "not reachable" in err.value.details()
    finally:
        node.containerd.start()
    assert node.daemon.alive
    with node.cri() as cri:  # the daemon is unharmed and the runtime reconnects
        assert cri.list() is not None  # no wait: the plugin reconnects within the call
        assert cri.pull(ref)
    assert ref in node.containerd.image_refs()
