"""The registry behind a corporate proxy: every request to the registry and its token service goes
through Debian's tinyproxy; the second node's blobs come from the first node, never through it."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from beiran_testkit.daemon import wait_until
from beiran_testkit.registry import docker_config, mirror_of, skopeo_copy, tree_files

pytestmark = pytest.mark.cluster


def _pull(registry, node, tmp_path, name):
    conf = registry.registries_conf(tmp_path / f"{name}.conf", mirror_of(node))
    res = skopeo_copy(f"docker://{registry.name}/test/img:v1", f"dir:{tmp_path / name}", conf)
    assert res.returncode == 0, res.stderr
    return tmp_path / name


def _blob_gets(tinyproxy) -> Counter[str]:
    return Counter(m.group(1) for r in tinyproxy.requests()
                   if (m := re.match(r"GET http://\S+/v2/\S+/blobs/(sha256:[0-9a-f]{64}) ", r)))


def test_registry_and_token_service_through_the_proxy_peers_direct(cluster, registry, test_images,
                                                                   tinyproxy, tmp_path):
    registry.proxy.auth = {"scheme": "bearer"}  # anonymous tokens from a token service, as Docker Hub
    config = docker_config(registry)
    config["proxy"] = {"http": tinyproxy.url}
    n1, n2 = cluster.start(2, config=config)
    img = test_images.img

    out1 = _pull(registry, n1, tmp_path, "n1")
    from_origin = registry.proxy.blob_gets()
    assert set(from_origin) == {b.digest for b in img.blobs}
    assert _blob_gets(tinyproxy) == from_origin, "every blob the registry served went through the proxy"
    assert any(f"GET {registry.url}/token?" in r for r in tinyproxy.requests()), "the token service too"
    assert registry.proxy.token_requests

    wanted = {b.digest for b in img.blobs}
    wait_until(lambda: wanted <= {b["digest"] for b in n2.api("GET", "/blobs?all=true")["blobs"]
                                  if b["nodes"].get(n1.uuid) == "complete"},
               10, what="node 1's blobs announced to node 2")
    out2 = _pull(registry, n2, tmp_path, "n2")
    assert tree_files(out1) == tree_files(out2)
    assert registry.proxy.blob_gets() == from_origin, "node 2's blobs came from node 1"
    assert _blob_gets(tinyproxy) == from_origin
    assert set(tinyproxy.upstreams()) == {registry.name}, "the proxy opened only the registry"
    for node in (n1, n2):
        assert node.ip not in tinyproxy.log(), "peer traffic went through the proxy"
