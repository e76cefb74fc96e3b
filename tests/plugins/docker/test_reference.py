"""Units without daemons: references, names, manifests and platforms, auth challenges, archives."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from beiran.errors import BadRequest
from beiran_plugins.docker import archive
from beiran_plugins.docker.errors import InvalidReference, NameInvalid, oci_code
from beiran_plugins.docker.manifest import (
    Descriptor,
    merge_accept,
    normalize_platform,
    parse_manifest,
    pick_platform,
)
from beiran_plugins.docker.reference import parse_reference, validate_registry, validate_repository
from beiran_plugins.docker.upstream import parse_challenge

D = "sha256:" + "ab" * 32


@pytest.mark.parametrize("text,expected", [
    ("alpine", "docker.io/library/alpine:latest"),
    ("alpine:3.19", "docker.io/library/alpine:3.19"),
    ("library/alpine", "docker.io/library/alpine:latest"),
    ("docker.io/alpine", "docker.io/library/alpine:latest"),
    ("index.docker.io/library/alpine:edge", "docker.io/library/alpine:edge"),
    ("user/app", "docker.io/user/app:latest"),
    ("localhost/x", "localhost/x:latest"),
    ("localhost:5000/x", "localhost:5000/x:latest"),
    ("localhost:5000/x/y:1.0", "localhost:5000/x/y:1.0"),
    ("ghcr.io/org/sub/app:v1-rc.2", "ghcr.io/org/sub/app:v1-rc.2"),
    (f"host.example/x:tag@{D}", f"host.example/x:tag@{D}"),
    (f"alpine@{D}", f"docker.io/library/alpine@{D}"),
    ("127.0.0.1:5000/test/img:v1", "127.0.0.1:5000/test/img:v1"),
    ("a__b/c-d--e.f_g", "docker.io/a__b/c-d--e.f_g:latest"),
])
def test_references_are_normalized_like_docker(text, expected):
    assert str(parse_reference(text)) == expected


def test_default_registry_and_familiar_names():
    ref = parse_reference("test/img:v1", default_registry="127.0.0.1:5000")
    assert (ref.registry, ref.repository, ref.tag) == ("127.0.0.1:5000", "test/img", "v1")
    assert parse_reference("alpine").familiar == "alpine:latest"
    assert parse_reference(f"alpine@{D}").reference == D


@pytest.mark.parametrize("text", ["", "upper/Case", "a b", "x:", ":tag", "x:-bad", "x@sha256:12", "x@md5:" + "a" * 32,
                                  "../etc", "a//b", "a/" + "b" * 300, "-lead/x", "x/y_", "host:99999/x"])
def test_invalid_references_are_one_clear_error(text):
    with pytest.raises(InvalidReference) as err:
        parse_reference(text)
    assert err.value.status == 400 and "\n" not in err.value.message and err.value.message


def test_names_follow_the_oci_grammar():
    assert validate_repository("library/alpine") == "library/alpine"
    for bad in ("..", "a/../b", "A", "a" * 256, "a/", "/a", "a..b", "a.-b"):
        with pytest.raises(NameInvalid):
            validate_repository(bad)
    assert validate_registry("Registry.Example.COM:5000") == "registry.example.com:5000"
    assert validate_registry("registry-1.docker.io") == "docker.io"
    for bad in ("bad..name", "http://x", "x/y", "-x.com", "x:port"):
        with pytest.raises(NameInvalid):
            validate_registry(bad)


def test_accept_headers_are_merged_and_platforms_picked():
    assert merge_accept(["a/b, c/d", "c/d", "e/f"]) == "a/b, c/d, e/f"
    assert "application/vnd.oci.image.index.v1+json" in merge_accept([])
    kids = [Descriptor(D, 1, platform="linux/amd64"), Descriptor("sha256:" + "cd" * 32, 1, platform="linux/arm64/v8"),
            Descriptor("sha256:" + "ef" * 32, 1, platform="linux/arm/v7"),
            Descriptor("sha256:" + "01" * 32, 1, platform="unknown/unknown")]
    assert pick_platform(kids, "linux/arm64").digest == "sha256:" + "cd" * 32
    assert pick_platform(kids, "arm64").digest == "sha256:" + "cd" * 32
    assert pick_platform(kids, "linux/arm/v7").digest == "sha256:" + "ef" * 32
    assert pick_platform(kids, "linux/arm/v6") is None
    assert pick_platform(kids, "windows/amd64") is None
    assert normalize_platform("Linux/x86_64") == "linux/amd64"
    with pytest.raises(BadRequest):
        normalize_platform("linux/amd64/v2/x")


def test_manifests_are_parsed_by_type_and_shape():
    image = {"schemaVersion": 2, "config": {"digest": D, "size": 3, "mediaType": "x/y"},
             "layers": [{"digest": D, "size": 5, "mediaType": "x/z"}]}
    parsed = parse_manifest(json.dumps(image).encode())  # no mediaType: OCI by shape
    assert parsed.kind == "image" and parsed.config.size == 3 and [b.size for b in parsed.blobs] == [3, 5]
    index = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
             "manifests": [{"digest": D, "size": 9, "platform": {"os": "linux", "architecture": "arm64"}}]}
    parsed = parse_manifest(json.dumps(index).encode())
    assert parsed.kind == "index" and parsed.children[0].platform == "linux/arm64"
    for bad in (b"not json", b"[]", json.dumps({"schemaVersion": 1, "fsLayers": []}).encode(),
                json.dumps({**image, "layers": [{"digest": "sha256:zz", "size": 1}]}).encode()):
        with pytest.raises(BadRequest):
            parse_manifest(bad)


def test_auth_challenges_and_error_codes():
    scheme, params = parse_challenge('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
                                     'scope="repository:library/alpine:pull"')
    assert scheme == "bearer" and params["realm"] == "https://auth.docker.io/token"
    assert params["scope"] == "repository:library/alpine:pull"
    assert parse_challenge('Basic realm="x"') == ("basic", {"realm": "x"})
    from beiran.errors import BlobNotFound, Forbidden, InvalidDigest, UpstreamError

    assert oci_code(InvalidDigest("x"), 400) == "DIGEST_INVALID"
    assert oci_code(BlobNotFound("x"), 404) == "BLOB_UNKNOWN"
    assert oci_code(Forbidden("x"), 403) == "DENIED"
    assert oci_code(UpstreamError("x"), 502) == "UNAVAILABLE"
    assert oci_code(None, 404, "MANIFEST_UNKNOWN") == "MANIFEST_UNKNOWN"


def test_docker_save_archives_are_valid_tars_with_sizes_known_up_front():
    blobs = {D: b"{}", "sha256:" + "cd" * 32: b"layer one" * 100, "sha256:" + "ef" * 32: b""}
    layers = [("sha256:" + "cd" * 32, 900), ("sha256:" + "ef" * 32, 0), ("sha256:" + "cd" * 32, 900)]
    members = archive.plan(D, 2, layers, ["reg/x:1"])
    data = b"".join(archive.iter_sync(members, lambda d: io.BytesIO(blobs[d])))
    assert len(data) == archive.archive_size(members)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())
        assert manifest == [{"Config": "ab" * 32 + ".json", "RepoTags": ["reg/x:1"],
                             "Layers": ["cd" * 32 + "/layer.tar", "ef" * 32 + "/layer.tar", "cd" * 32 + "/layer.tar"]}]
        assert tar.extractfile("cd" * 32 + "/layer.tar").read() == b"layer one" * 100
        assert tar.extractfile("ab" * 32 + ".json").read() == b"{}"
