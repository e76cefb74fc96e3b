"""containerd's existing content store, indexed read-only after verification and served to peers."""

from __future__ import annotations

import hashlib

import pytest

from beiran_testkit.containerd import Containerd
from beiran_testkit.daemon import wait_until
from beiran_testkit.registry import docker_config, mirror_of, skopeo_copy

pytestmark = pytest.mark.cluster


def test_blobs_containerd_pulled_before_beiran_ran_are_served_to_node2_from_node1(cluster, registry, test_images,
                                                                                  tmp_path):
    """Must show 6."""
    img = test_images.img
    ctd = Containerd().start()
    try:
        ctd.pull(f"{registry.name}/test/img:v1", plain_http=True)  # straight from the registry
        # a file that does not match its name must not be indexed
        bogus = hashlib.sha256(b"the real content").hexdigest()
        (ctd.content_dir / "blobs" / "sha256" / bogus).write_bytes(b"something else")
        before = registry.proxy.blob_gets()
        assert set(before) == {b.digest for b in img.blobs}

        n1 = cluster.add(docker_config(registry, containerd_content_dir=str(ctd.content_dir)), peers=None)
        wanted = {img.manifest.digest, *(b.digest for b in img.blobs)}

        def indexed() -> bool:
            blobs = {b["digest"]: b for b in n1.api("GET", "/blobs")["blobs"]}
            return wanted <= set(blobs) and all(blobs[d]["state"] == "external" for d in wanted)
        wait_until(indexed, 20, what="node 1 to index containerd's content")
        assert f"sha256:{bogus}" not in {b["digest"] for b in n1.api("GET", "/blobs")["blobs"]}

        n2 = cluster.add(docker_config(registry), peers=[n1.url])
        cluster.wait_connected([n1, n2])
        conf = registry.registries_conf(tmp_path / "n2.conf", mirror_of(n2))
        res = skopeo_copy(f"docker://{registry.name}/test/img:v1", f"dir:{tmp_path / 'out'}", conf)
        assert res.returncode == 0, res.stderr
        assert registry.proxy.blob_gets() == before, "node 2 got every blob from node 1"
        for blob in img.blobs:
            assert (tmp_path / "out" / blob.digest.split(":")[1]).read_bytes() == ctd.blob(blob.digest)
        served = n1.metrics()
        assert any("served_bytes" in k and v > 0 for k, v in served.items()), served
        # containerd's files are read, never moved or changed
        for blob in img.blobs:
            assert hashlib.sha256(ctd.blob(blob.digest)).hexdigest() == blob.digest.split(":")[1]
    finally:
        ctd.cleanup()
