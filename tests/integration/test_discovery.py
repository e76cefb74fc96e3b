"""Plugins together: what no single plugin's session can show, run with every wheel installed
(`nox -s "tests(integration)"`)."""

from __future__ import annotations

import uuid

import pytest

from beiran_testkit.daemon import wait_until

pytestmark = pytest.mark.cluster
SRV = "_beiran._tcp.beiran.test"


def test_node_seen_by_zeroconf_dns_and_static_config_is_listed_once(cluster, dnsmasq):
    """Must show 4, and discovery never overrides a static peer: b's DNS record going away leaves
    it connected (static, zeroconf) and drops only "dns" from how it was found."""
    a_ip, b_ip = cluster.ip(0), cluster.ip(1)
    dnsmasq.set_records(srv={SRV: [("a.beiran.test", 8888), ("b.beiran.test", 8888)]},
                        hosts={"a.beiran.test": [a_ip], "b.beiran.test": [b_ip]})
    cfg = {"plugins": {"dns": {"names": [SRV], "nameservers": [dnsmasq.address], "interval": 30}}}
    cfg["plugins"]["zeroconf"] = {"cluster": f"t-{uuid.uuid4().hex[:12]}"}
    a = cluster.add(cfg, peers=[f"http://{b_ip}:8888"])
    b = cluster.add(cfg, peers=None)
    wait_until(lambda: {"static", "zeroconf", "dns"} <= set(a.entry(b)["found_by"])
               and a.entry(b)["status"] == "online", 15, what="a to find b through all three")
    wait_until(lambda: {"zeroconf", "dns"} <= set(b.entry(a)["found_by"]), 15, what="b to find a through both")
    for node, other in ((a, b), (b, a)):
        listed = node.cli("node", "list", "--json")
        assert [n["uuid"] for n in listed].count(other.uuid) == 1 and len(listed) == 2
    assert "static" not in b.entry(a)["found_by"]

    dnsmasq.set_records(srv={SRV: [("a.beiran.test", 8888)]})
    wait_until(lambda: "dns" not in a.entry(b)["found_by"], 10, what="'dns' dropped from b's sources")
    assert a.entry(b)["status"] == "online"
    assert set(a.entry(b)["found_by"]) == {"static", "zeroconf"}
