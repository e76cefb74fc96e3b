"""The README's client snippets, used as written (only addresses replaced)."""

from __future__ import annotations

from pathlib import Path

import pytest

from beiran_testkit.containerd import Containerd
from beiran_testkit.registry import docker_config, mirror_of, readme_blocks, skopeo_copy

pytestmark = pytest.mark.cluster
README = Path(__file__).resolve().parents[3] / "beiran_plugins" / "docker" / "README.md"


def _block(lang: str, marker: str) -> str:
    found = [b for b in readme_blocks(README, lang) if marker in b]
    assert len(found) == 1, f"README has {len(found)} {lang} blocks with {marker!r}"
    return found[0]


def test_readme_hosts_toml_and_registries_conf_send_pulls_through_beiran(cluster, registry, test_images, tmp_path):
    config = docker_config(registry, default_registry="docker.io")
    config["plugins"]["docker"]["registries"]["docker.io"] = {"url": registry.url}
    (node,) = cluster.start(1, config=config)
    me = mirror_of(node)

    hosts = _block("toml", "capabilities").replace("127.0.0.1:8888", me)
    hosts = hosts.replace("https://registry-1.docker.io", registry.url)
    ctd = Containerd().start()
    try:
        certs = ctd.dir / "certs.d"
        (certs / "docker.io").mkdir(parents=True)
        (certs / "docker.io" / "hosts.toml").write_text(hosts)
        ctd.pull("docker.io/test/img:v1", hosts_dir=certs)
        for blob in [test_images.img.manifest, *test_images.img.blobs]:
            assert ctd.blob(blob.digest) == test_images.layout.path_of(blob.digest).read_bytes()
    finally:
        ctd.cleanup()
    stored = {b["digest"] for b in node.api("GET", "/blobs")["blobs"]}
    assert {b.digest for b in test_images.img.blobs} <= stored, "containerd pulled through Beiran"

    conf = tmp_path / "registries.conf"
    conf.write_text(_block("toml", "location = \"127.0.0.1:8888\"\n").replace("127.0.0.1:8888", me))
    res = skopeo_copy("docker://docker.io/test/zstd:v1", f"dir:{tmp_path / 'out'}", conf)
    assert res.returncode == 0, res.stderr  # there is no Docker Hub here: only the mirror can answer
    assert (tmp_path / "out" / "manifest.json").read_bytes() == test_images.zstd.manifest_bytes
