"""Fixtures for the docker plugin: one origin registry (docker-registry behind a counting proxy) with
the test images pushed once per session, and helpers to point daemons and clients at it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from beiran_testkit.oci import Image, Layout, hello_elf
from beiran_testkit.registry import Registry

NEEDED = ["docker-registry", "skopeo"]


@dataclass
class ImageSet:
    layout: Layout
    img: Image  # test/img:v1: OCI, 3 layers (gzip, gzip, plain tar), runnable /hello
    multi_index: Any  # test/multi:v1: OCI index (Blob)
    multi: dict[str, Image]  # platform -> image
    docker: Image  # test/docker:v1: Docker schema 2 media types
    docker_list: Any  # test/dockerlist:v1: Docker manifest list (Blob)
    zstd: Image  # test/zstd:v1: a zstd layer


@pytest.fixture(scope="session")
def oci_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Registry, ImageSet]]:
    missing = [b for b in NEEDED if shutil.which(b) is None]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: apt-get install docker-registry skopeo containerd docker.io")
    base = tmp_path_factory.mktemp("oci")
    reg = Registry(base / "registry").start()
    lay = Layout(base / "layout")
    img = lay.image([({"hello": hello_elf()}, "gzip"), ({"etc/motd": b"beiran test image\n" * 50}, "gzip"),
                     ({"etc/data": bytes(range(256)) * 64}, None)])
    lay.tag(img.manifest, "img")
    multi = {"linux/amd64": lay.image([({"arch": b"amd64\n"}, "gzip")], arch="amd64"),
             "linux/arm64": lay.image([({"arch": b"arm64\n"}, "gzip")], arch="arm64", variant="v8"),
             "linux/arm/v7": lay.image([({"arch": b"armv7\n"}, "gzip")], arch="arm", variant="v7")}
    index = lay.index(list(multi.values()))
    lay.tag(index, "multi")
    zstd = lay.image([({"z": b"zstd layer\n" * 100}, "zstd"), ({"hello": hello_elf()}, "gzip")])
    lay.tag(zstd.manifest, "zstd")
    docker = lay.image([({"d": b"docker media types\n"}, "gzip"), ({"e": b"plain\n"}, None)], docker=True)
    dl_amd = lay.image([({"a": b"list amd64\n"}, "gzip")], arch="amd64", docker=True)
    dl_arm = lay.image([({"a": b"list arm64\n"}, "gzip")], arch="arm64", variant="v8", docker=True)
    docker_list = lay.index([dl_amd, dl_arm], docker=True)
    lay.push("img", f"{reg.push_name}/test/img:v1")
    lay.push("multi", f"{reg.push_name}/test/multi:v1", all_platforms=True)
    lay.push("zstd", f"{reg.push_name}/test/zstd:v1")
    for repo, images_, top, ref in (("test/docker", [docker], None, "v1"),
                                    ("test/dockerlist", [dl_amd, dl_arm], docker_list, "v1")):
        for im in images_:  # skopeo's oci: transport will not read Docker media types: push by HTTP
            for b in im.blobs:
                reg.put_blob(repo, lay.path_of(b.digest).read_bytes())
            reg.put_manifest(repo, im.manifest.digest if top else ref, im.manifest_bytes, im.manifest.media_type)
        if top is not None:
            reg.put_manifest(repo, ref, lay.path_of(top.digest).read_bytes(), top.media_type)
    yield reg, ImageSet(lay, img, index, multi, docker, docker_list, zstd)
    reg.stop()


@pytest.fixture
def registry(oci_registry: tuple[Registry, ImageSet]) -> Iterator[Registry]:
    """The session's registry, running and with clean counters and no fault rules."""
    reg, _ = oci_registry
    if not reg.running:
        reg.start()
    reg.proxy.reset()
    yield reg
    reg.proxy.reset()
    if not reg.running:
        reg.start()


@pytest.fixture
def test_images(oci_registry: tuple[Registry, ImageSet]) -> ImageSet:
    return oci_registry[1]
