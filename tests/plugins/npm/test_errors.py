"""Bad input and a misbehaving upstream: npm gets clear errors, the daemon carries on (Must show 6),
plus writes (refused / forwarded) and sha1-only versions."""

from __future__ import annotations

import json
import subprocess

import pytest

from beiran_testkit.verdaccio import (
    ALPHA,
    LEGACY,
    lock_packages,
    npm,
    npm_daemon_config,
    write_npmrc,
    write_project,
)

pytestmark = pytest.mark.cluster


def error_of(node, path: str, **headers: str) -> tuple[int, str]:
    status, _, body = node.tcp("GET", path, headers=headers)
    return status, json.loads(body)["error"]


def test_invalid_names_and_unknown_packages_get_clear_errors(cluster, upstream, registry, work):
    (node,) = cluster.start(1, config=npm_daemon_config(upstream.url))
    for path, why in [
        ("/npm/..%2f..%2fetc%2fpasswd", "'..' is not allowed"),
        ("/npm/../../etc/passwd", "'..' is not allowed"),
        ("/npm/@beiran-test/..", "'..' is not allowed"),
        ("/npm/@beiran-test%2f..%2f..%2fx", "'..' is not allowed"),
        ("/npm/Beiran-Test-Alpha", "must be lower case"),
        ("/npm/" + "a" * 215, "longer than 214"),
        ("/npm/foo%20bar", "no spaces"),
        ("/npm/.hidden", "cannot start with '.'"),
        ("/npm/foo%3Cscript%3E", "url-safe"),
        ("/npm/@scope", "a scoped name is @scope/name"),
        ("/npm/x/-/..%2f..%2fy.tgz", "invalid tarball file name"),
    ]:
        status, message = error_of(node, path)
        assert status == 400 and why in message, (path, status, message)
    assert upstream.requests == {}, "bad names must never reach the upstream"
    status, message = error_of(node, "/npm/beiran-test-no-such-package")
    assert status == 404 and "not in the registry" in message
    status, message = error_of(node, f"/npm/{ALPHA}/-/{ALPHA}-9.9.9.tgz")
    assert status == 404

    p = write_project(work / "p", {})
    reg = node.url + "/npm/"
    out = npm(["install", "Beiran-Test-Upper"], p, reg, work / "c", check=False)
    assert out.returncode != 0 and "must be lower case" in out.stderr, out.stderr
    out = npm(["install", "beiran-test-no-such-package"], p, reg, work / "c", check=False)
    assert "E404" in out.stderr and "not in the registry" in out.stderr, out.stderr
    assert node.api("GET", "/ping")["pong"] is True


def test_upstream_404_500_timeout_malformed_and_corrupt_tarballs(cluster, upstream, registry, work):
    (node,) = cluster.start(1, config=npm_daemon_config(upstream.url, timeout=2))
    reg = node.url + "/npm/"
    p = write_project(work / "p", {})

    def install(pkg: str) -> str:
        out = npm(["install", pkg], p, reg, work / "c", check=False, timeout=60)
        assert out.returncode != 0, out.stdout
        return out.stderr

    upstream.fault("/beiran-test-p05", "404")
    assert "E404" in install("beiran-test-p05")
    upstream.fault("/beiran-test-p06", "500")
    err = install("beiran-test-p06")
    assert "E502" in err and "answered 500" in err, err
    upstream.fault("/beiran-test-p07", "malformed")
    err = install("beiran-test-p07")
    assert "E502" in err and "malformed packument" in err, err
    upstream.fault("/beiran-test-p08", "hang")
    err = install("beiran-test-p08")
    assert "E504" in err and "did not answer" in err, err
    # the origin corrupts a tarball: verification fails, nothing is stored, npm gets a 502
    upstream.fault("/beiran-test-p09/-/", "corrupt")
    err = install("beiran-test-p09")
    assert "E502" in err and "expected digest" in err, err
    assert registry.pub("beiran-test-p09", "1.0.0").digest not in {b["digest"] for b in
                                                                   node.api("GET", "/blobs")["blobs"]}
    assert node.metrics()["beiran_verification_failures_total"] >= 1

    # the daemon is unharmed: once the upstream behaves, the same packages install
    for prefix in list(upstream.faults):
        upstream.fault(prefix, None)
    npm(["install", "beiran-test-p05", "beiran-test-p06", "beiran-test-p07", "beiran-test-p09"], p, reg,
        work / "c")
    assert {"node_modules/beiran-test-p09", "node_modules/beiran-test-p07"} <= set(lock_packages(p))


def test_writes_refused_with_a_message_or_forwarded(cluster, upstream, registry, work):
    refuse = cluster.add(config=npm_daemon_config(upstream.url), peers=None)
    forward = cluster.add(config=npm_daemon_config(upstream.url, writes="forward"), peers=None)
    pkg = write_project(work / "pkg", {}, name="beiran-test-published-through")
    (pkg / "index.js").write_text("module.exports = 1;\n")
    token = registry.verdaccio.token

    def publish(node, version: str):
        data = json.loads((pkg / "package.json").read_text())
        data.update(version=version, private=False)
        (pkg / "package.json").write_text(json.dumps(data))
        rc = write_npmrc(work / f"rc-{version}", node.url + "/npm/", token=token)
        return subprocess.run(["npm", "publish", "--userconfig", str(rc), "--cache", str(work / "pc")],
                              cwd=pkg, capture_output=True, text=True, timeout=120)

    out = publish(refuse, "1.0.0")
    assert out.returncode != 0 and "E405" in out.stderr and 'writes = "forward"' in out.stderr, out.stderr
    assert ("PUT", "/beiran-test-published-through") not in upstream.requests
    out = publish(forward, "1.0.0")
    assert out.returncode == 0, out.stderr
    assert upstream.requests[("PUT", "/beiran-test-published-through")] == 1
    # what was published through Beiran installs through Beiran
    p = write_project(work / "p", {"beiran-test-published-through": "1.0.0"})
    npm(["install"], p, refuse.url + "/npm/", work / "c")
    assert (p / "node_modules/beiran-test-published-through/index.js").exists()
    # npm ping is answered by Beiran itself; other registry calls follow the writes setting
    assert npm(["ping"], p, refuse.url + "/npm/", work / "c").returncode == 0
    status, _, body = refuse.tcp("POST", "/npm/-/npm/v1/security/advisories/bulk", b"{}",
                                 {"Content-Type": "application/json"})
    assert status == 405 and upstream.url in json.loads(body)["error"]


def test_sha1_only_versions_pass_through_verified_and_unshared(cluster, upstream, registry, work):
    (node,) = cluster.start(1, config=npm_daemon_config(upstream.url))
    p = write_project(work / "p", {LEGACY: "1.0.0"})
    npm(["install"], p, node.url + "/npm/", work / "c")
    assert (p / "node_modules" / LEGACY / "index.js").exists()
    assert node.api("GET", "/blobs")["blobs"] == []  # not stored, not shared
    # a tarball that does not match its sha1 is cut short, never completed
    upstream.fault(f"/{LEGACY}/-/", "corrupt")
    status, _, body = node.tcp("GET", f"/npm/{LEGACY}/-/{LEGACY}-1.0.0.tgz")
    assert status == 502 and "sha1" in json.loads(body)["error"]
