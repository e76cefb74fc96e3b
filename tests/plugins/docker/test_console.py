"""The console with the docker plugin: after an image pull the image's name (the plugin's own panel)
and the bytes-by-source figures appear in a real browser without a reload."""

from __future__ import annotations

import pytest

from beiran.cli.output import human_size
from beiran_testkit.browser import chromium, save_screenshot, text_of
from beiran_testkit.daemon import wait_until
from beiran_testkit.registry import docker_config, mirror_of, skopeo_copy

pytestmark = pytest.mark.cluster


def _pull(registry, node, tmp_path, name):
    conf = registry.registries_conf(tmp_path / f"{name}.conf", mirror_of(node))
    res = skopeo_copy(f"docker://{registry.name}/test/img:v1", f"dir:{tmp_path / name}", conf)
    assert res.returncode == 0, res.stderr


def test_browser_shows_a_pulled_image_and_where_its_bytes_came_from(cluster, registry, test_images, tmp_path):
    n1, n2, _n3 = cluster.start(3, config=docker_config(registry))
    cluster.wait_connected()
    size = sum(b.size for b in test_images.img.blobs)
    with chromium() as driver:
        driver.get(f"{n2.url}/ui/")
        wait_until(lambda: "No image pulled" in text_of(driver, "#panels"), timeout=20,
                   what="the docker panel, empty")
        assert "docker" in text_of(driver, "#plugins") and "ready" in text_of(driver, "#plugins")

        _pull(registry, n1, tmp_path, "n1")  # the origin, once
        _pull(registry, n2, tmp_path, "n2")  # node 2: every blob from node 1
        wait_until(lambda: "test/img:v1" in text_of(driver, "#panels"), timeout=15,
                   what="the image's name in the docker panel")
        panel = text_of(driver, "#panels")
        assert f"{n2.uuid[:8]}" in panel and f"{n1.uuid[:8]}" in panel, panel  # held whole by both
        # node 2 fetched from the origin only the blobs it is the rendezvous owner of (for node 1)
        by_source = n2.api("GET", "/ui/state")["bytes"]["by_source"]
        assert by_source["peer"] > 0 and by_source["peer"] + by_source.get("origin", 0) >= size, by_source
        for key in ("peer", "origin"):
            wait_until(lambda key=key: text_of(driver, f"#bytes-{key}") == human_size(by_source.get(key, 0)),
                       timeout=10, what=f"the {key} bytes figure")
        save_screenshot(driver, "console-docker.png", also=tmp_path / "console.png")
    assert registry.proxy.blob_gets() and all(n == 1 for n in registry.proxy.blob_gets().values())
