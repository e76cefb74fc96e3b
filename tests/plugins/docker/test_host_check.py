"""DNS rebinding (issue 12, item 8): a web page on the machine whose name now resolves to 127.0.0.1
must not be able to use the registry mirror. The daemon answers only a `Host` that names it."""

from __future__ import annotations

import pytest

from beiran_testkit.registry import docker_config, oci_error

pytestmark = pytest.mark.cluster


def test_registry_mirror_refuses_a_rebound_host(cluster, registry, test_images):
    (node,) = cluster.start(1, config=docker_config(registry))
    path = "/v2/test/img/manifests/v1"
    port = node.url.rsplit(":", 1)[1]
    for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1.evil.example:{port}"):
        status, _, body = node.tcp("GET", path, headers={"Host": host})
        assert status == 403 and oci_error(body) == "DENIED", (host, status, body[:200])
    assert registry.proxy.count() == 0  # nothing reached the registry on a rebound page's behalf
    for host in (f"{node.ip}:{port}", f"localhost:{port}", node.ip):
        status, _, body = node.tcp("GET", path, headers={"Host": host})
        assert status == 200 and body == test_images.img.manifest_bytes, (host, status)
