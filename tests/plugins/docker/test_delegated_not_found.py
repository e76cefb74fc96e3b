"""Issue 18 item 5: a registry's 404 on a delegated fetch is the answer, not a broken peer. The
requester's client gets the registry's 404, no peer failure is counted, the owner never logs a
missing temp file, and an image named by digest is written `name@sha256:...`."""

from __future__ import annotations

import hashlib
import json

import pytest

from beiran_testkit.registry import docker_config, oci_error

pytestmark = pytest.mark.cluster


def _owned_by(owner: str, other: str, prefix: str) -> str:
    from beiran.fetch import placement

    i = 0
    while True:
        d = "sha256:" + hashlib.sha256(f"{prefix}-{i}".encode()).hexdigest()
        if placement.owner(d, [owner, other]) == owner:
            return d
        i += 1


def test_registry_404_on_a_delegated_fetch_is_not_found_not_a_peer_fault(cluster, registry):
    n1, n2 = cluster.start(2, config=docker_config(registry))
    blob = _owned_by(n2.uuid, n1.uuid, "no-such-blob")
    manifest = _owned_by(n2.uuid, n1.uuid, "no-such-manifest")
    b_status, _, b_body = n1.tcp("GET", f"/v2/test/img/blobs/{blob}")
    m_status, _, m_body = n1.tcp("GET", f"/v2/test/img/manifests/{manifest}")
    failures = n1.metrics().get("beiran_peer_failures_total", 0)
    print(f"\nblob: {b_status} {b_body[:200]!r}\nmanifest: {m_status} {m_body[:300]!r}\npeer failures {failures}")
    assert b_status == 404 and oci_error(b_body) == "BLOB_UNKNOWN", b_body
    assert m_status == 404 and oci_error(m_body) == "MANIFEST_UNKNOWN", m_body
    assert failures == 0
    assert "No such file or directory" not in n2.log()
    message = json.loads(m_body)["errors"][0]["message"]
    assert f"test/img:{manifest}" not in message
    assert registry.proxy.blob_gets()[blob] == 1  # the owner asked once; the requester believed it
