"""Several registries through one node for registries.conf clients: `prefix = "NAME"` makes
`/v2/NAME/<repository>/...` that registry's. podman (real) pulls from two registries through one
node; a second node's pulls take every blob from the first, so the registries' counts show it."""

from __future__ import annotations

from collections import Counter

import pytest

from beiran_testkit.oci import Layout, random_bytes
from beiran_testkit.podman import Podman
from beiran_testkit.registry import Registry, mirror_of

pytestmark = pytest.mark.cluster


def test_podman_pulls_two_registries_through_one_node_by_prefix(cluster, registry, test_images, tmp_path):
    other = Registry(tmp_path / "other").start()
    try:
        layout = Layout(tmp_path / "layout")
        image = layout.image([({"other": random_bytes(50_000, seed=3)}, "gzip")])
        layout.tag(image.manifest, "o")
        layout.push("o", f"{other.push_name}/team/tool:v2")
        registries = {registry.name: {"url": registry.url, "prefix": "one"},
                      other.name: {"url": other.url, "prefix": "two"}}
        others = {name: {"enabled": False} for name in ("apt", "npm", "dns", "k8s", "zeroconf")}
        config = {"plugins": {**others, "docker": {"registries": registries, "engine": False}}}
        n1, n2 = cluster.start(2, config=config)

        for i, node in enumerate((n1, n2)):
            podman = Podman(tmp_path / f"podman{i}")
            podman.mirrors([(registry.name, f"{mirror_of(node)}/one"), (other.name, f"{mirror_of(node)}/two")])
            try:
                for ref in (f"{registry.name}/test/img:v1", f"{other.name}/team/tool:v2"):
                    res = podman.pull(ref)
                    assert res.returncode == 0, res.stderr
            finally:
                podman.cleanup()
            if i == 0:  # node 1 fetched each blob of both images from its registry, once
                assert registry.proxy.blob_gets() == Counter({b.digest: 1 for b in test_images.img.blobs})
                assert other.proxy.blob_gets() == Counter({b.digest: 1 for b in image.blobs})
        # node 2's pulls (podman asked node 2 for /v2/one/... and /v2/two/...) left both registries alone:
        # had node 2 not understood the prefixes, podman would have fallen back to the registries
        assert registry.proxy.blob_gets() == Counter({b.digest: 1 for b in test_images.img.blobs})
        assert other.proxy.blob_gets() == Counter({b.digest: 1 for b in image.blobs})
        served = n2.metrics()
        assert any(k.startswith("beiran_fetch_bytes_total{source=peer}") and v > 0 for k, v in served.items()), served
    finally:
        other.stop()


def test_a_bad_or_duplicate_prefix_is_a_config_error(cluster, registry):
    for prefix in ("Two/Segments", "../x", ""):
        node = cluster.add(config={"plugins": {"docker": {"registries": {registry.name: {"url": registry.url,
                                                                                        "prefix": prefix}}}}},
                           peers=None)
        plugins = {p["name"]: p for p in node.api("GET", "/status")["plugins"]}
        assert plugins["docker"]["status"] == "error" and "prefix" in plugins["docker"]["error"], plugins["docker"]
        node.stop()
