"""Upstream auth (the Bearer token flow, anonymous and with credentials; Basic auth) and the blob
responses' Range handling, against the real registry behind the test proxy."""

from __future__ import annotations

import base64

import pytest

from beiran_testkit.registry import docker_config, oci_error

pytestmark = pytest.mark.cluster


def _with_credentials(registry, user, password):
    config = docker_config(registry)
    config["plugins"]["docker"]["registries"][registry.name].update(username=user, password=password)
    return config


def test_bearer_token_flow_anonymous_and_with_credentials_and_basic_auth(cluster, registry, test_images):
    img = test_images.img
    proxy = registry.proxy
    proxy.auth = {"scheme": "bearer"}  # anonymous tokens, as Docker Hub gives for public images
    anon = cluster.add(docker_config(registry), peers=None)
    status, _, body = anon.tcp("GET", "/v2/test/img/manifests/v1")
    assert status == 200 and body == img.manifest_bytes
    assert proxy.token_requests and proxy.token_requests[0]["query"]["scope"] == ["repository:test/img:pull"]
    assert proxy.token_requests[0]["query"]["service"] == ["test-registry"]
    assert proxy.token_requests[0]["authorization"] == ""

    proxy.auth = {"scheme": "bearer", "user": "alice", "password": "s3cret"}
    proxy.tokens.clear()  # earlier tokens are revoked
    status, _, body = anon.tcp("GET", f"/v2/test/img/blobs/{img.config.digest}")
    assert status == 401 and oci_error(body) == "UNAUTHORIZED"
    creds = cluster.add(_with_credentials(registry, "alice", "s3cret"), peers=None)
    status, _, body = creds.tcp("GET", f"/v2/test/img/blobs/{img.config.digest}")
    assert status == 200 and body == test_images.layout.path_of(img.config.digest).read_bytes()
    basic = "Basic " + base64.b64encode(b"alice:s3cret").decode()
    assert proxy.token_requests[-1]["authorization"] == basic

    proxy.auth = {"scheme": "basic", "user": "alice", "password": "s3cret"}
    status, _, body = creds.tcp("GET", f"/v2/test/img/blobs/{img.layers[1].digest}")
    assert status == 200 and body == test_images.layout.path_of(img.layers[1].digest).read_bytes()
    status, _, body = anon.tcp("GET", f"/v2/test/img/blobs/{img.layers[2].digest}")
    assert status == 401 and oci_error(body) == "UNAUTHORIZED"
    wrong = cluster.add(_with_credentials(registry, "alice", "wrong"), peers=None)
    status, _, body = wrong.tcp("GET", "/v2/test/img/manifests/v1")
    assert status == 401 and oci_error(body) == "UNAUTHORIZED"
    # the password never shows in the effective config
    assert "s3cret" not in str(creds.api("GET", "/config"))


def _with(registry, **section):
    config = docker_config(registry)
    config["plugins"]["docker"]["registries"][registry.name].update(section)
    return config


def test_identity_token_and_registry_token(cluster, registry, test_images):
    """Docker config's "identitytoken" (an OAuth2 refresh token, exchanged at the token service) and
    "registrytoken" (sent to the registry as it is), as credential helpers and kubelet hand them over."""
    img = test_images.img
    proxy = registry.proxy
    proxy.auth = {"scheme": "bearer", "user": "alice", "password": "s3cret", "refresh_token": "refresh-1"}
    node = cluster.add(_with(registry, identity_token="refresh-1"), peers=None)
    status, _, body = node.tcp("GET", "/v2/test/img/manifests/v1")
    assert status == 200 and body == img.manifest_bytes
    exchange = proxy.token_requests[-1]
    assert exchange["method"] == "POST" and exchange["form"]["grant_type"] == ["refresh_token"]
    assert exchange["form"]["scope"] == ["repository:test/img:pull"] and exchange["authorization"] == ""
    wrong = cluster.add(_with(registry, identity_token="refresh-2"), peers=None)
    status, _, body = wrong.tcp("GET", "/v2/test/img/manifests/v1")
    assert status == 401 and oci_error(body) == "UNAUTHORIZED"

    proxy.tokens.add("handed-over")  # a token the registry accepts, obtained elsewhere
    asked = len(proxy.token_requests)
    direct = cluster.add(_with(registry, registry_token="handed-over"), peers=None)
    status, _, body = direct.tcp("GET", f"/v2/test/img/blobs/{img.config.digest}")
    assert status == 200 and body == test_images.layout.path_of(img.config.digest).read_bytes()
    assert len(proxy.token_requests) == asked  # used as it is, never exchanged
    stale = cluster.add(_with(registry, registry_token="revoked"), peers=None)
    status, _, body = stale.tcp("GET", f"/v2/test/img/blobs/{img.config.digest}")
    assert status == 401 and oci_error(body) == "UNAUTHORIZED"
    assert "refresh-1" not in str(node.api("GET", "/config"))


def test_blob_ranges_heads_and_registry_headers(cluster, registry, test_images):
    (node,) = cluster.start(1, config=docker_config(registry))
    layer = test_images.img.layers[2]  # plain tar, 20 KiB
    data = test_images.layout.path_of(layer.digest).read_bytes()
    path = f"/v2/test/img/blobs/{layer.digest}"
    status, headers, _ = node.tcp("HEAD", path)  # not local yet: the size comes from the upstream
    assert status == 200 and int(headers["Content-Length"]) == len(data)
    assert not any(d == layer.digest for d in registry.proxy.blob_gets())
    status, headers, body = node.tcp("GET", path, headers={"Range": "bytes=100-1099"})  # cold: streamed
    assert status == 206 and body == data[100:1100]
    assert headers["Content-Range"] == f"bytes 100-1099/{len(data)}"
    assert headers["Docker-Content-Digest"] == layer.digest
    status, headers, body = node.tcp("GET", path, headers={"Range": f"bytes={len(data) - 10}-"})
    assert status == 206 and body == data[-10:]
    status, _, body = node.tcp("GET", path, headers={"Range": f"bytes={len(data)}-"})
    assert status == 416
    status, headers, body = node.tcp("GET", path)
    assert status == 200 and body == data and headers["Content-Type"] == "application/octet-stream"
    assert registry.proxy.blob_gets()[layer.digest] == 1
    # manifests: HEAD answers the digest, type and length without the body
    status, headers, body = node.tcp("HEAD", "/v2/test/img/manifests/v1")
    assert status == 200 and body == b"" and headers["Docker-Content-Digest"] == test_images.img.manifest.digest
    assert int(headers["Content-Length"]) == len(test_images.img.manifest_bytes)
    assert headers["Content-Type"] == "application/vnd.oci.image.manifest.v1+json"
    status, _, body = node.tcp("GET", "/v2/")
    assert status == 200
