"""Issue 12 item 4 (docker): with the registry down, a peer's `/docker/tags` answer with `updated: 9e18`
must not make a node serve the attacker's manifest for a tag.

The attacker is a real daemon whose tag mapping was tampered with (as a compromised machine would)
and which holds the attacker's manifest, so the digest it names verifies."""

from __future__ import annotations

import json
import sqlite3

import pytest

from beiran_testkit.daemon import wait_until
from beiran_testkit.registry import docker_config, oci_error

pytestmark = pytest.mark.cluster

ACCEPT = {"Accept": "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, "
                    "application/vnd.docker.distribution.manifest.v2+json"}
PATH = "/v2/test/img/manifests/v1"


def _tamper_tag(node, digest: str, size: int, media_type: str) -> None:
    """Rewrite the attacker's own mapping of test/img:v1, dated far in the future."""
    db = sqlite3.connect(node.data_dir / "beiran.db", timeout=10)
    try:
        with db:
            n = db.execute("UPDATE dockertag SET digest = ?, size = ?, media_type = ?, updated = 9e18 "
                           "WHERE repository = 'test/img' AND tag = 'v1'", (digest, size, media_type)).rowcount
        assert n == 1
    finally:
        db.close()


def _offline_metric(node, outcome: str) -> float:
    return node.metrics().get(f"beiran_offline_answers_total{{outcome={outcome}}}{{plugin=docker}}", 0)


def test_registry_down_a_tampered_peer_tag_is_never_served_two_agreeing_peers_are(cluster, registry, test_images):
    img, evil = test_images.img, test_images.zstd
    n1, n2, attacker = cluster.start(3, config=docker_config(registry))
    for node in (n1, n2, attacker):  # each resolves the tag at the registry itself
        status, headers, body = node.tcp("GET", PATH, headers=ACCEPT)
        assert status == 200 and body == img.manifest_bytes
        assert "X-Beiran-Offline" not in headers
    attacker.add_blob(evil.manifest_bytes)
    _tamper_tag(attacker, evil.manifest.digest, evil.manifest.size, evil.manifest.media_type)
    status, _, body = attacker.tcp("GET", f"/docker/tags?registry={registry.name}&repository=test/img&tag=v1")
    assert status == 200 and json.loads(body)["updated"] == 9e18
    wait_until(lambda: evil.manifest.digest in {b["digest"] for b in n1.api("GET", "/blobs?all=true")["blobs"]},
               10, what="node 1 to see the attacker's manifest blob")
    registry.stop()

    # 1. a node prefers its own last answer from the registry to a peer's "newer" one
    status, headers, body = n1.tcp("GET", PATH, headers=ACCEPT)
    assert body != evil.manifest_bytes, "the attacker's manifest was served for a tag this node knew"
    assert status == 200 and body == img.manifest_bytes
    assert headers.get("X-Beiran-Offline") == "own"
    assert _offline_metric(n1, "own") == 1

    # two nodes that never saw the tag: one whose only peer is the attacker, one that knows every node
    lonely = cluster.add(config=docker_config(registry), peers=[attacker.url], start=False)
    fresh = cluster.add(config=docker_config(registry), peers=[n1.url, n2.url, attacker.url], start=False)
    for node in (lonely, fresh):
        node.start(wait=False)
    for node in (lonely, fresh):
        node.wait_ready()
    cluster.wait_connected([lonely, attacker])
    assert lonely.online_peers() == {attacker.uuid}
    # 2. with only the attacker as a peer: no answer at all
    status, _, body = lonely.tcp("GET", PATH, headers=ACCEPT)
    assert body != evil.manifest_bytes, "one peer's word was served for a tag during an outage"
    assert status == 502 and oci_error(body) == "UNAVAILABLE"
    assert _offline_metric(lonely, "refused") == 1 and _offline_metric(lonely, "agreed") == 0
    assert "peers do not agree" in lonely.log()  # 1 of 1 answered: below the quorum of 2

    # 3. two honest peers agree, the attacker disagrees: the honest answer, marked as offline
    cluster.wait_connected([fresh, n1, n2, attacker])
    status, headers, body = fresh.tcp("GET", PATH, headers=ACCEPT)
    assert status == 200 and body == img.manifest_bytes
    assert headers.get("X-Beiran-Offline") == "agreed; peers=" + ",".join(sorted(n.uuid[:8] for n in (n1, n2)))
    assert _offline_metric(fresh, "agreed") == 1
    line = next(x for x in fresh.log().splitlines() if "offline answer (docker)" in x)
    assert "WARNING" in line and f"{registry.name}/test/img:v1" in line and img.manifest.digest in line
    assert n1.uuid[:8] in line and n2.uuid[:8] in line and attacker.uuid[:8] not in line
