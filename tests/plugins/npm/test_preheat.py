"""`beiran npm preheat`: the chosen nodes fetch packages' tarballs (with their dependencies) now,
each tarball leaving the registry once for the whole cluster."""

from __future__ import annotations

import json

import pytest

from beiran_testkit.registry import beiran
from beiran_testkit.verdaccio import ALPHA, UTIL, npm_daemon_config

pytestmark = pytest.mark.cluster


def test_preheat_puts_each_tarball_on_every_node_and_the_origin_serves_it_once(cluster, upstream, registry):
    nodes = cluster.start(3, config={**npm_daemon_config(upstream.url), "cluster_token": "npm-preheat"})
    cluster.wait_connected()
    res = beiran(nodes[0], "npm", "preheat", f"{UTIL}@1.1.0", "--json")
    summary = json.loads(res.stdout)
    assert summary["failed"] == [] and {r["node"] for r in summary["nodes"]} == {n.uuid for n in nodes}
    wanted = [registry.pub(UTIL, "1.1.0"), registry.pub(ALPHA, "1.1.0")]  # and its dependency (~1.1.0)
    for n in nodes:
        for pub in wanted:
            assert n.blob(pub.digest) == pub.tarball
    tarballs = upstream.tarball_requests()
    assert len(tarballs) == 2 and set(tarballs.values()) == {1}, tarballs
    assert summary["sources"]["origin"] == sum(len(p.tarball) for p in wanted)


def test_preheat_of_an_unknown_package_fails_with_one_line(cluster, upstream, registry):
    (n1,) = cluster.start(1, config=npm_daemon_config(upstream.url))
    res = beiran(n1, "npm", "preheat", "beiran-test-no-such-package", check=False)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "beiran-test-no-such-package" in res.stderr.strip().splitlines()[-1]


def test_preheat_answers_say_whose_fault_a_failure_is(cluster, upstream, registry):
    """An invalid package name was a 404 like an unknown package, and so was an upstream that does
    not answer: a caller (and a retry policy) could not tell "fix the request" from "try later"."""
    import socket

    with socket.socket() as s:  # a loopback port nothing listens on: the upstream is down
        s.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{s.getsockname()[1]}"
    n1 = cluster.add(npm_daemon_config(upstream.url), peers=None)
    n2 = cluster.add(npm_daemon_config(down), peers=None)
    cases = [(n1, ["Not A Name!"], 400, "invalid_package_name"), (n1, ["beiran-test-no-such-package"], 404, None),
             (n2, [UTIL], 502, None), (n1, ["beiran-test-no-such-package", "Not A Name!"], 400, "invalid_package_name")]
    for node, packages, status, code in cases:
        got, _, body = node.request("POST", "/npm/-/beiran/preheat", {"packages": packages})
        assert got == status and (code is None or json.loads(body)["code"] == code), (packages, got, body[:300])
    res = beiran(n2, "npm", "preheat", UTIL, check=False)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and UTIL in res.stderr, res.stderr
