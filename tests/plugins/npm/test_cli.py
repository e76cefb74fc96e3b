"""`beiran npm packages / warm / configure` against real daemons."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from beiran_testkit.verdaccio import ALPHA, UTIL, npm_daemon_config

pytestmark = pytest.mark.cluster


def beiran(node, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "beiran", "--socket", node.socket, *args],
                         capture_output=True, text=True, timeout=120)
    if ok:
        assert out.returncode == 0, out.stderr
    return out


def test_warm_packages_and_configure(cluster, upstream, registry, work):
    n1, n2 = cluster.start(2, config=npm_daemon_config(upstream.url))

    # ranges, an exact version, dependencies (util 1.1.0 needs alpha ~1.1.0)
    out = beiran(n1, "npm", "warm", f"{ALPHA}@^1.0.0", f"{UTIL}@1.1.0", "--json")
    summary = json.loads(out.stdout)
    assert summary["fetched"] == 3 and summary["failed"] == []
    rows = json.loads(beiran(n1, "npm", "packages", "--json").stdout)
    assert [(r["name"], r["version"]) for r in rows] == [(UTIL, "1.1.0"), (ALPHA, "1.1.0"), (ALPHA, "1.2.0")]
    for r in rows:
        pub = registry.pub(r["name"], r["version"])
        assert (r["integrity"], r["size"], r["digest"]) == (pub.integrity, len(pub.tarball), pub.digest)
    table = beiran(n1, "npm", "packages").stdout
    assert "NAME" in table and "beiran-test-alpha" in table and "INTEGRITY" in table
    # warming twice fetches nothing new from the origin
    before = sum(upstream.tarball_requests().values())
    beiran(n1, "npm", "warm", f"{ALPHA}@^1.0.0", f"{UTIL}@1.1.0", "--no-progress")
    assert sum(upstream.tarball_requests().values()) == before

    # a lockfile (v3, public-registry URLs, an alias, a link and a git dependency that are skipped)
    p11, p12 = registry.pub("beiran-test-p11", "1.0.0"), registry.pub("beiran-test-p12", "1.0.0")
    lock = {"lockfileVersion": 3, "packages": {
        "": {"name": "x"},
        "node_modules/beiran-test-p11": {"version": "1.0.0", "integrity": p11.integrity,
                                         "resolved": "https://registry.npmjs.org/beiran-test-p11/-/beiran-test-p11-1.0.0.tgz"},
        "node_modules/renamed": {"name": "beiran-test-p12", "version": "1.0.0", "integrity": p12.integrity,
                                 "resolved": "https://registry.npmjs.org/beiran-test-p12/-/beiran-test-p12-1.0.0.tgz"},
        "node_modules/local": {"resolved": "../local", "link": True},
        "node_modules/gitdep": {"version": "1.0.0", "resolved": "git+ssh://git@example.invalid/x.git#abc"}}}
    (work / "package-lock.json").write_text(json.dumps(lock))
    out = beiran(n2, "npm", "warm", "--lockfile", str(work / "package-lock.json"), "--json")
    assert json.loads(out.stdout)["fetched"] == 2
    rows2 = {r["digest"] for r in json.loads(beiran(n2, "npm", "packages", "--json").stdout)}
    assert rows2 == {p11.digest, p12.digest}
    # --all: the cluster's tarballs and who holds them
    everything = {r["digest"]: r for r in json.loads(beiran(n1, "npm", "packages", "--all", "--json").stdout)}
    assert set(everything) >= {p11.digest, p12.digest, *(r["digest"] for r in rows)}
    assert n2.uuid in everything[p11.digest]["nodes"] and n1.uuid in everything[rows[0]["digest"]]["nodes"]

    # errors: one line, exit status 1
    out = beiran(n1, "npm", "warm", "beiran-test-no-such-package", "Bad-Name@1", ok=False)
    assert out.returncode == 1 and "2 package(s) could not be warmed" in out.stderr
    assert "not in the registry" in out.stderr and "lower case" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    # with --json: one JSON document on stdout (it used to be followed by a second one), one line on stderr
    out = beiran(n1, "npm", "warm", "beiran-test-no-such-package", "--json", ok=False)
    assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert json.loads(out.stdout)["failed"][0]["package"].startswith("beiran-test-no-such-package")
    out = beiran(n1, "npm", "warm", ok=False)
    assert out.returncode == 1 and "nothing to warm" in out.stderr and "Traceback" not in out.stderr

    out = beiran(n1, "npm", "configure")
    lines = [x for x in out.stdout.splitlines() if not x.startswith(";")]
    assert lines == [f"registry={n1.url}/npm/", "replace-registry-host=127.0.0.1",
                     f"//{n1.ip}:{n1.port}/npm/:_authToken=beiran-proxy-serves-reads-only"]
    assert "registry" in beiran(n1, "npm", "--help").stdout
