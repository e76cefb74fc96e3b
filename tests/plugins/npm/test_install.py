"""Real `npm install` / `npm ci` through Beiran nodes in front of a real verdaccio (Must show 1 and 4)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from beiran_testkit.verdaccio import (
    ALPHA,
    BIG,
    SCOPED,
    UTIL,
    installed_tree,
    lock_packages,
    npm,
    npm_daemon_config,
    write_project,
)

pytestmark = pytest.mark.cluster


def copy_project(src: Path, dst: Path, resolved_base: str | None = None) -> Path:
    """package.json + package-lock.json of `src`; with `resolved_base`, every `resolved` URL is
    rewritten to that registry (as if the lockfile had been made against it)."""
    dst.mkdir(parents=True)
    shutil.copy(src / "package.json", dst)
    lock = json.loads((src / "package-lock.json").read_text())
    if resolved_base:
        for entry in lock["packages"].values():
            if "resolved" in entry:
                entry["resolved"] = resolved_base + entry["resolved"].split("/npm/", 1)[1]
    (dst / "package-lock.json").write_text(json.dumps(lock, indent=2))
    return dst


def test_install_on_one_node_then_ci_on_others_gets_tarballs_from_peers(cluster, upstream, registry, work):
    """Must show 1, and lockfiles whose `resolved` URLs point at another node or the public registry."""
    n1, n2, n3 = cluster.start(3, config=npm_daemon_config(upstream.url))
    deps = {SCOPED: "^1.0.0", ALPHA: "^2.0.0", UTIL: "1.1.0", BIG: "^1.0.0", "beiran-test-p01": "^1.0.0"}
    p1 = write_project(work / "p1", deps)
    npm(["install"], p1, n1.url + "/npm/", work / "cache1")
    lock = lock_packages(p1)
    # scoped, nested older versions, dependencies: 8 tarballs, all resolved at node 1
    assert lock["node_modules/beiran-test-alpha"]["version"] == "2.0.0"
    assert lock["node_modules/@beiran-test/scoped/node_modules/beiran-test-alpha"]["version"] == "1.2.0"
    assert lock["node_modules/beiran-test-alpha"]["resolved"].startswith(n1.url + "/npm/beiran-test-alpha/-/")
    assert len(lock) == 8
    first = upstream.tarball_requests()
    assert sorted(first.values()) == [1] * 8, first

    # node 2: `npm ci` with node 1's lockfile. Its `resolved` URLs name node 1; replace-registry-host
    # sends them to node 2 (whose route ignores the extra /npm/ prefix this produces).
    upstream.reset()
    p2 = copy_project(p1, work / "p2")
    npm(["ci"], p2, n2.url + "/npm/", work / "cache2", npmrc={"replace-registry-host": "always"})
    assert installed_tree(p2) == installed_tree(p1)
    assert upstream.tarball_requests() == {}, "the origin served tarballs for node 2"
    served = n2.api("GET", "/status")["plugins"]
    npm_status = next(p for p in served if p["name"] == "npm")
    assert npm_status["counters"].get("tarballs_fetched", 0) + npm_status["counters"].get("tarballs_local", 0) == 8
    # the bytes node 2 stored (and served to npm) are the published tarballs
    for entry in lock.values():
        pub = registry.by_file()[entry["resolved"].rsplit("/", 1)[1]]
        assert n2.blob(pub.digest) == pub.tarball
        assert entry["integrity"] == pub.integrity

    # node 3: a lockfile made against the public registry, default replace-registry-host ("npmjs"):
    # npm sends every tarball to node 3, which gets them from its peers.
    p3 = copy_project(p1, work / "p3", resolved_base="https://registry.npmjs.org/")
    held = {b["digest"] for b in n3.api("GET", "/blobs")["blobs"]}  # as rendezvous owner of some
    peer_bytes = n3.metrics().get("beiran_fetch_bytes_total{source=peer}", 0)
    # (https-proxy: a dead loopback port, so a URL npm failed to replace never leaves the machine)
    npm(["ci"], p3, n3.url + "/npm/", work / "cache3", npmrc={"https-proxy": "http://127.0.0.1:9", "noproxy": n3.ip})
    assert installed_tree(p3) == installed_tree(p1)
    assert upstream.tarball_requests() == {}
    new = [b for b in n3.api("GET", "/blobs")["blobs"] if b["digest"] not in held]
    assert new, "node 3 fetched nothing"
    assert n3.metrics()["beiran_fetch_bytes_total{source=peer}"] - peer_bytes == sum(b["size"] for b in new)


def test_scoped_packages_dist_tags_abbreviated_metadata_and_versions(cluster, upstream, registry, work):
    """Must show 4."""
    (node,) = cluster.start(1, config=npm_daemon_config(upstream.url))
    reg = node.url + "/npm/"

    # abbreviated packument, scoped name escaped the way npm escapes it and unescaped
    for path in ("/npm/@beiran-test%2fscoped", "/npm/@beiran-test/scoped", "/npm/@beiran-test%2Fscoped"):
        status, headers, body = node.tcp("GET", path, headers={"Accept": "application/vnd.npm.install-v1+json"})
        assert status == 200, body
        assert headers["Content-Type"].startswith("application/vnd.npm.install-v1+json")
        doc = json.loads(body)
        assert doc["name"] == SCOPED and "readme" not in doc and "main" not in doc["versions"]["1.0.0"]
        assert doc["versions"]["1.0.0"]["dist"]["tarball"] == f"{node.url}/npm/{SCOPED}/-/scoped-1.0.0.tgz"
    # full packument: versions, dist-tags, every tarball rewritten to the Host the client used
    status, headers, body = node.tcp("GET", f"/npm/{ALPHA}", headers={"Accept": "application/json",
                                                                     "Host": "npm.localhost:1234"})
    doc = json.loads(body)
    assert headers["Content-Type"].startswith("application/json")
    assert doc["dist-tags"] == {"latest": "2.0.0", "next": "3.0.0-beta.1"}
    assert sorted(doc["versions"]) == ["1.0.0", "1.1.0", "1.2.0", "2.0.0", "3.0.0-beta.1"]
    assert "time" in doc
    for v, m in doc["versions"].items():
        assert m["dist"]["tarball"] == f"http://npm.localhost:1234/npm/{ALPHA}/-/{ALPHA}-{v}.tgz"
        assert m["dist"]["integrity"] == registry.pub(ALPHA, v).integrity
    # one version, by number and by tag
    assert json.loads(node.tcp("GET", f"/npm/{ALPHA}/1.1.0")[2])["version"] == "1.1.0"
    assert json.loads(node.tcp("GET", f"/npm/{ALPHA}/next")[2])["version"] == "3.0.0-beta.1"
    assert node.tcp("GET", f"/npm/{ALPHA}/9.9.9")[0] == 404
    # conditional request from the client
    etag = node.tcp("GET", f"/npm/{ALPHA}")[1]["Etag"]  # (Tornado spells it so)
    assert node.tcp("GET", f"/npm/{ALPHA}", headers={"If-None-Match": etag})[0] == 304

    # real npm: a dist-tag, a range over several versions, an exact old version, a scoped package
    p = write_project(work / "p", {})
    npm(["install", f"{ALPHA}@next", f"{UTIL}@~1.0.0", f"{SCOPED}@latest"], p, reg, work / "cache")
    lock = lock_packages(p)
    assert lock["node_modules/beiran-test-alpha"]["version"] == "3.0.0-beta.1"
    assert lock["node_modules/@beiran-test/util"]["version"] == "1.0.0"
    assert lock["node_modules/@beiran-test/scoped/node_modules/beiran-test-alpha"]["version"] == "1.2.0"
    assert (p / "node_modules/@beiran-test/scoped/index.js").read_text().find(SCOPED) > 0
    q = write_project(work / "q", {ALPHA: "1.0.0 || 1.1.0"})
    npm(["install"], q, reg, work / "cache", npmrc={"prefer-online": "true"})
    assert lock_packages(q)["node_modules/beiran-test-alpha"]["version"] == "1.1.0"
    # npm's abbreviated-metadata client path (`npm view` asks for the full document)
    out = npm(["view", SCOPED, "dist-tags.latest", "--json"], q, reg, work / "cache2")
    assert json.loads(out.stdout) == "1.0.0"
