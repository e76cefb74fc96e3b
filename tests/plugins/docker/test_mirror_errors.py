"""Bad input and bad upstreams: the spec's error codes and statuses, the daemon unharmed, and nothing
unverified in the store."""

from __future__ import annotations

import hashlib
import http.client
import json

import pytest

from beiran_testkit.registry import docker_config, oci_error

pytestmark = pytest.mark.cluster


def _error_body(code: str) -> bytes:
    return json.dumps({"errors": [{"code": code, "message": "from the test registry"}]}).encode()


def test_bad_names_digests_registries_and_bad_upstreams_get_oci_errors(cluster, registry, test_images):
    """Must show 7."""
    (node,) = cluster.start(1, config=docker_config(registry))
    img = test_images.img
    cases = [
        ("GET", "/v2/../../etc/manifests/v1", 400, "NAME_INVALID"),
        ("GET", "/v2/Test/Img/manifests/v1", 400, "NAME_INVALID"),
        ("GET", f"/v2/{'a' * 256}/manifests/v1", 400, "NAME_INVALID"),
        ("GET", "/v2/test/img/manifests/-v1", 400, "TAG_INVALID"),
        ("GET", "/v2/test/img/manifests/sha256:1234", 400, "DIGEST_INVALID"),
        ("GET", "/v2/test/img/blobs/md5:d41d8cd98f00b204e9800998ecf8427e", 400, "DIGEST_INVALID"),
        ("GET", "/v2/test/img/blobs/sha256:XYZ", 400, "DIGEST_INVALID"),
        ("GET", "/v2/test/img/manifests/v1?ns=bad..registry", 400, "NAME_INVALID"),
        ("GET", "/v2/test/img/manifests/v1?ns=unknown-registry.invalid", 502, "UNAVAILABLE"),
        ("GET", "/v2/test/img/manifests/nosuchtag", 404, "MANIFEST_UNKNOWN"),
        ("GET", "/v2/test/nosuchrepo/manifests/v1", 404, "MANIFEST_UNKNOWN"),  # what Distribution says
        ("GET", "/v2/test/img/blobs/sha256:" + "0" * 64, 404, "BLOB_UNKNOWN"),
        ("HEAD", "/v2/test/img/blobs/sha256:" + "0" * 64, 404, None),
        ("PUT", "/v2/test/img/manifests/v1", 405, "UNSUPPORTED"),
        ("POST", "/v2/test/img/blobs/uploads/", 405, "UNSUPPORTED"),
        ("GET", "/v2/_catalog", 405, "UNSUPPORTED"),
    ]
    for method, path, status, code in cases:
        got, headers, body = node.tcp(method, path, body=b"{}" if method in ("PUT", "POST") else None)
        assert got == status, (method, path, got, body[:300])
        assert {k.lower(): v for k, v in headers.items()}["docker-distribution-api-version"] == "registry/2.0"
        if code:
            assert oci_error(body) == code, (path, body[:300])

    # the upstream misbehaves
    proxy = registry.proxy
    proxy.fail[r"/v2/test/docker/"] = (401, _error_body("UNAUTHORIZED"))
    status, _, body = node.tcp("GET", "/v2/test/docker/manifests/v1")
    assert status == 401 and oci_error(body) == "UNAUTHORIZED"
    for code in ("MANIFEST_UNKNOWN", "NAME_UNKNOWN"):
        proxy.fail[r"/v2/test/docker/"] = (404, _error_body(code))
        status, _, body = node.tcp("GET", "/v2/test/docker/manifests/v1")
        assert status == 404 and oci_error(body) == code
    proxy.fail[r"/v2/test/docker/"] = (500, b"oops")
    status, _, body = node.tcp("GET", "/v2/test/docker/manifests/v1")
    assert status == 502 and oci_error(body) == "UNAVAILABLE"
    status, _, body = node.tcp("GET", f"/v2/test/docker/blobs/{test_images.docker.layers[0].digest}")
    assert status == 502 and oci_error(body) == "UNAVAILABLE"
    proxy.fail.clear()

    # an oversize manifest (by digest, after the tag resolved)
    proxy.replace[rf"/manifests/{test_images.zstd.manifest.digest}$"] = b"{" + b" " * (5 << 20) + b"}"
    status, _, body = node.tcp("GET", "/v2/test/zstd/manifests/v1")
    assert status == 502 and oci_error(body) == "MANIFEST_INVALID"
    # a manifest whose bytes do not match the digest it is fetched by
    tampered = img.manifest_bytes.replace(b'"schemaVersion": 2', b'"schemaVersion":  2')
    proxy.replace[rf"/manifests/{img.manifest.digest}$"] = tampered
    status, _, body = node.tcp("GET", "/v2/test/img/manifests/v1")
    assert status == 502 and oci_error(body) == "DIGEST_INVALID"
    status, _, body = node.tcp("GET", f"/v2/test/img/manifests/{img.manifest.digest}")
    assert status == 502 and oci_error(body) == "DIGEST_INVALID"
    # ... and by tag, when the registry says one digest and sends other bytes
    proxy.replace[r"/manifests/v1$"] = tampered
    status, _, body = node.tcp("GET", "/v2/test/multi/manifests/v1")
    assert status in (502,) and oci_error(body) == "DIGEST_INVALID"
    # a layer whose bytes do not match: the transfer is cut, the layer not kept
    layer = img.layers[0]
    proxy.replace[rf"/blobs/{layer.digest}$"] = b"x" * layer.size
    try:
        status, _, body = node.tcp("GET", f"/v2/test/img/blobs/{layer.digest}")
        assert status == 502 and oci_error(body) == "DIGEST_INVALID"  # failed before the headers went
    except (OSError, http.client.HTTPException):
        pass  # or the body was cut before its last byte
    proxy.replace.clear()

    assert node.tcp("GET", "/ping")[0] == 200
    stored = node.api("GET", "/blobs")["blobs"]
    bad = {test_images.zstd.manifest.digest, img.manifest.digest, layer.digest,
           test_images.multi_index.digest}
    assert not bad & {b["digest"] for b in stored}
    for b in stored:
        assert "sha256:" + hashlib.sha256(node.blob(b["digest"])).hexdigest() == b["digest"]
    # and once the upstream behaves, the same requests work
    status, _, body = node.tcp("GET", "/v2/test/img/manifests/v1")
    assert status == 200 and body == img.manifest_bytes


def test_clients_outside_client_cidrs_are_denied(cluster, registry):
    config = {**docker_config(registry), "client_cidrs": ["10.99.0.0/16"]}
    (node,) = cluster.start(1, config=config)
    status, _, body = node.tcp("GET", "/v2/test/img/manifests/v1")
    assert status == 403 and oci_error(body) == "DENIED"
    assert registry.proxy.count() == 0
