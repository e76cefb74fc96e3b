"""The Docker engine (dockerd started by the test): `beiran docker pull` loads and the image runs,
listing, `docker save`-compatible archives, engine events, rmi; Docker's registry-mirrors as the
README writes it."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from beiran_testkit.daemon import wait_until
from beiran_testkit.dockerd import Dockerd
from beiran_testkit.registry import beiran, docker_config, readme_blocks

pytestmark = pytest.mark.cluster
README = Path(__file__).resolve().parents[3] / "beiran_plugins" / "docker" / "README.md"


@pytest.fixture
def dockerd():
    if shutil.which("dockerd") is None:
        pytest.fail("dockerd is missing: apt-get install docker.io")
    engines: list[Dockerd] = []

    def start(daemon_json: dict) -> Dockerd:
        engine = Dockerd(daemon_json).start()
        engines.append(engine)
        return engine
    yield start
    for engine in engines:
        engine.cleanup()


def test_pull_loads_into_dockerd_it_runs_is_listed_saved_and_removed(cluster, registry, test_images, dockerd,
                                                                     tmp_path):
    """Must show 5, plus Docker's registry-mirrors (README) and engine events."""
    mirror_json = json.loads(readme_blocks(README, "json")[0].replace("127.0.0.1:8888", f"{cluster.ip(0)}:8888"))
    engine = dockerd(mirror_json)
    config = docker_config(registry, engine=True, docker_host=engine.host, default_registry="docker.io")
    config["plugins"]["docker"]["registries"]["docker.io"] = {"url": registry.url}
    (node,) = cluster.start(1, config=config)
    ref = f"{registry.name}/test/img:v1"

    out = beiran(node, "docker", "pull", ref, "--no-progress")
    assert "Pulled " + ref in out.stdout and "3 layers" in out.stdout, out.stdout
    assert "Loaded into the Docker engine" in out.stdout, out.stdout
    assert any(ref in im.get("RepoTags") or [] for im in engine.images())
    run = engine.docker("run", "--rm", "--network", "none", ref)
    assert run.stdout == "hello from beiran\n"

    listed = json.loads(beiran(node, "docker", "images", "--json").stdout)["images"]
    mine = [i for i in listed if i["source"] == "beiran" and i["ref"] == ref]
    assert mine and mine[0]["complete"] and mine[0]["digest"] == test_images.img.manifest.digest
    assert any(i["source"] == "engine" and i["ref"] == ref for i in listed)
    table = beiran(node, "docker", "images").stdout
    assert ref in table and "engine" in table and "beiran" in table

    archive = tmp_path / "img.tar"
    beiran(node, "docker", "save", ref, "-o", str(archive))
    res = subprocess.run(["skopeo", "copy", "--quiet", f"docker-archive:{archive}",
                                        f"oci:{tmp_path / 'oci'}:v1"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    index = json.loads((tmp_path / "oci" / "index.json").read_text())
    assert len(index["manifests"]) == 1
    engine.docker("rmi", ref)
    engine.docker("load", "-i", str(archive))
    assert engine.docker("run", "--rm", "--network", "none", ref).stdout == "hello from beiran\n"

    # Docker pulling a Docker Hub name by itself: through the mirror (there is no Docker Hub here),
    # and the daemon sees it in the engine by following its events
    engine.docker("pull", "test/docker:v1")
    wait_until(lambda: any(i["source"] == "engine" and i["ref"] == "test/docker:v1"
                           for i in json.loads(beiran(node, "docker", "images", "--json").stdout)["images"]),
               20, what="the engine's new image in `beiran docker images`")
    mirrored = node.api("GET", "/docker/images")["images"]
    assert any(i["ref"] == "docker.io/test/docker:v1" and i["via"] == "mirror" for i in mirrored)
    assert registry.proxy.blob_gets()[test_images.docker.layers[0].digest] == 1

    out = beiran(node, "docker", "rmi", ref)
    assert "removed" in out.stdout
    listed = json.loads(beiran(node, "docker", "images", "--json").stdout)["images"]
    assert not [i for i in listed if i["source"] == "beiran" and i["ref"] == ref]
    have = {b["digest"] for b in node.api("GET", "/blobs")["blobs"]}
    assert not {b.digest for b in test_images.img.layers} & have


def test_pull_without_an_engine_says_so_and_keeps_the_image(cluster, registry, test_images, tmp_path):
    config = docker_config(registry, engine=True, docker_host=f"unix://{tmp_path}/no-docker.sock")
    (node,) = cluster.start(1, config=config)
    out = beiran(node, "docker", "pull", "test/img:v1", "--no-progress")
    assert "No Docker engine reachable" in out.stdout and "stays in Beiran's store" in out.stdout
    listed = json.loads(beiran(node, "docker", "images", "--json").stdout)
    assert listed["engine"]["reachable"] is False
    assert [i["digest"] for i in listed["images"]] == [test_images.img.manifest.digest]
