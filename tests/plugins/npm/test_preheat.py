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
