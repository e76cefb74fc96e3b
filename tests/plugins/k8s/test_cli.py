"""`beiran k8s images [--all] [--json]` and `beiran k8s configure-containerd` (whose --write already
set up every node's containerd in the fixture), run as the real CLI against the real daemons."""

from __future__ import annotations

import json

import pytest

from beiran_testkit.daemon import wait_until

pytestmark = [pytest.mark.cluster]


def test_images_lists_runtime_images_and_cluster_holders(env):
    n1, n2 = env.nodes[0], env.nodes[1]
    ref, _ = env.image(layers=2)
    with n1.cri() as cri:
        image_id = cri.pull(ref)
    with n2.cri() as cri:
        cri.pull(ref)

    def listed():
        out = n1.cli("k8s", "images", "--all", "--json")
        assert out.returncode == 0, out.stderr
        item = next(i for i in json.loads(out.stdout)["images"] if i["id"] == image_id)
        return item if item["nodes"].get(n2.daemon.uuid) == "complete" else None
    item = wait_until(listed, 10, what="node 2 to be listed as holding the image")
    assert ref in item["tags"] and item["beiran"] is True and item["private"] is False
    assert item["nodes"][n1.daemon.uuid] == "runtime"

    table = n1.cli("k8s", "images", "--all")
    assert table.returncode == 0, table.stderr
    assert "IMAGE" in table.stdout and "NODES" in table.stdout and ref in table.stdout
    assert n2.daemon.uuid[:8] in table.stdout and "this node" in table.stdout


def test_configure_containerd_prints_what_it_writes(env):
    node = env.nodes[0]
    out = node.cli("k8s", "configure-containerd", "--json", "--registry", "ghcr.io",
                   "--containerd-config", str(node.containerd.base / "containerd.toml"))
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    by_registry = {f["registry"]: f for f in plan["files"]}
    assert {env.registry.name, env.private.name, "ghcr.io"} <= set(by_registry)
    f = by_registry[env.registry.name]
    assert f["path"] == f"{node.containerd.certs}/{env.registry.name}/hosts.toml"
    assert f'server = "{env.registry.url}"' in f["content"]
    assert f'[host."{node.daemon.url}"]' in f["content"] and '"pull", "resolve"' in f["content"]
    assert (node.containerd.certs / env.registry.name / "hosts.toml").read_text() == f["content"]
    assert 'server = "https://ghcr.io"' in by_registry["ghcr.io"]["content"]
    assert plan["containerd_config"]["config_path_set"] is True

    text = node.cli("k8s", "configure-containerd", "--containerd-config", "/nonexistent/config.toml")
    assert text.returncode == 0, text.stderr
    assert "config_path" in text.stdout and "io.containerd.grpc.v1.cri" in text.stdout

    help_text = node.cli("k8s", "--help")
    assert help_text.returncode == 0 and "configure-containerd" in help_text.stdout

    plain = node.cli("k8s", "images")
    assert plain.returncode == 0 and "PULLED VIA" in plain.stdout, plain.stderr
