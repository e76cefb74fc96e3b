"""`beiran docker ...`: light imports, one-line errors, progress, cluster-wide listings, saving an
image this node never pulled (its blobs from the node that has them)."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile

import pytest

from beiran_testkit.registry import beiran, docker_config

HEAVY = ["docker", "tornado", "peewee", "apt_pkg", "grpc", "zeroconf", "dns"]
PROBE = """
import json, sys
from beiran.cli.main import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print("\\n@@" + json.dumps(sorted(sys.modules)))
"""


@pytest.mark.parametrize("args", [["docker", "--help"], ["docker", "pull", "--help"], ["docker", "images", "--help"]])
def test_docker_help_imports_nothing_heavy(args, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("BEIRAN_")}
    env["BEIRAN_SOCKET"] = str(tmp_path / "none.sock")
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env=env, timeout=60)
    assert "Usage:" in proc.stdout
    modules = json.loads(proc.stdout.rsplit("@@", 1)[1])
    assert sorted(m for m in modules if m.split(".")[0] in HEAVY) == []


@pytest.mark.cluster
def test_cli_pull_progress_listings_info_save_and_errors(cluster, registry, test_images, tmp_path):
    n1, n2 = cluster.start(2, config=docker_config(registry))
    out = beiran(n1, "docker", "pull", "test/img:v1", "--no-load")
    # one line per finished blob when stderr is not a terminal (bars when it is), one summary line
    assert len([x for x in out.stderr.splitlines() if re.search(r"done \((origin|peer)\)$", x)]) == 4, out.stderr
    assert re.fullmatch(rf"Pulled {registry.name}/test/img:v1 \(sha256:\w{{12}}, linux/amd64\): 3 layers, "
                        r"20\.7 KiB in [\d.]+s \(local 0 B, peers [\d.]+ \w+, origin [\d.]+ \w+\)\n", out.stdout)
    beiran(n2, "docker", "pull", "test/zstd:v1", "--no-load", "--no-progress")
    pins = {b["digest"]: b["pinned_by"] for b in n1.api("GET", "/blobs")["blobs"]}
    for blob in [test_images.img.manifest, *test_images.img.blobs]:
        assert f"docker:{registry.name}/test/img@{test_images.img.manifest.digest}" in pins[blob.digest]

    everything = json.loads(beiran(n1, "docker", "images", "--all", "--json").stdout)["images"]
    where = {i["ref"]: i["nodes"] for i in everything}
    assert where == {f"{registry.name}/test/img:v1": [n1.uuid], f"{registry.name}/test/zstd:v1": [n2.uuid]}
    only2 = json.loads(beiran(n1, "docker", "images", "--node", n2.uuid, "--json").stdout)["images"]
    assert [i["ref"] for i in only2] == [f"{registry.name}/test/zstd:v1"]
    # the 8 characters of a UUID the tables show are enough
    assert json.loads(beiran(n1, "docker", "images", "--node", n2.uuid[:8], "--json").stdout)["images"] == only2
    table = beiran(n1, "docker", "images", "--all").stdout
    assert "test/zstd:v1" in table and "NODES" in table
    layers = json.loads(beiran(n1, "docker", "layers", "--all", "--json").stdout)
    by_digest = {x["digest"]: x for x in layers}
    # (a node may also hold a layer it fetched from the origin as the rendezvous owner for its peer)
    for layer in test_images.zstd.layers:
        assert n2.uuid in by_digest[layer.digest]["nodes"]
        assert f"{registry.name}/test/zstd:v1" in by_digest[layer.digest]["images"]
    for layer in test_images.img.layers:
        assert n1.uuid in by_digest[layer.digest]["nodes"]
    info = json.loads(beiran(n1, "docker", "info", "test/img:v1", "--json").stdout)
    assert info["digest"] == test_images.img.manifest.digest and info["platform"] == "linux/amd64"
    assert [x["digest"] for x in info["layers"]] == [b.digest for b in test_images.img.layers]
    assert info["config"]["rootfs"]["type"] == "layers"

    # node 2 never pulled test/img: `save` streams it from node 1's blobs
    before = registry.proxy.blob_gets()
    target = tmp_path / "img.tar"
    beiran(n2, "docker", "save", "test/img:v1", "-o", str(target))
    assert registry.proxy.blob_gets() == before
    with tarfile.open(target) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())
        assert manifest[0]["RepoTags"] == [f"{registry.name}/test/img:v1"]
        for layer, path in zip(test_images.img.layers, manifest[0]["Layers"], strict=True):
            assert tar.extractfile(path).read() == test_images.layout.path_of(layer.digest).read_bytes()
    # the same archive over HTTP, as a peer would get it
    status, headers, body = n1.tcp("GET", f"/docker/images/{registry.name}/test/img:v1")
    assert status == 200 and headers["Content-Type"] == "application/x-tar"
    assert int(headers["Content-Length"]) == len(body)
    assert tarfile.open(fileobj=io.BytesIO(body)).getnames()
    # a layer by digest, verified, with registry headers
    layer = test_images.img.layers[0]
    status, headers, body = n2.tcp("GET", f"/docker/layers/{layer.digest}")
    assert status == 200 and headers["Docker-Content-Digest"] == layer.digest
    assert body == test_images.layout.path_of(layer.digest).read_bytes()
    # admin operations are refused over TCP
    assert n1.tcp("DELETE", f"/docker/images/{registry.name}/test/img:v1")[0] == 403
    assert n1.tcp("POST", "/docker/images?cmd=pull", json.dumps({"ref": "test/img:v1"}).encode())[0] == 403

    for args, message in ((["pull", "upper/Case"], "invalid reference"),
                          (["pull", "test/img:v1", "--platform", "linux/a/b/c"], "invalid platform"),
                          (["pull", "test/nosuch:v1"], "answered 404"),
                          (["rmi", "test/nosuch:v1"], "is not on this node"),
                          (["info", "test/nosuch:v1"], "is not on this node")):
        res = beiran(n1, "docker", *args, check=False)
        assert res.returncode == 1 and message in res.stderr, (args, res.stderr)
        assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
        if args[0] in ("pull", "info"):  # --json: one JSON document on stdout, the one line on stderr too
            res = beiran(n1, "docker", *args, "--json", check=False)
            assert res.returncode == 1 and message in res.stderr and len(res.stderr.strip().splitlines()) == 1
            assert message in json.dumps(json.loads(res.stdout)), res.stdout
