"""Issue 12 item 1: a discovered address outside `peer_cidrs` is never contacted (no /info probe,
no dial), whatever DNS says; one inside is. A listener on 127.0.0.8 counts who connects."""

from __future__ import annotations

import time

import pytest

from beiran_testkit.daemon import wait_until
from beiran_testkit.fakepeer import CountingListener

pytestmark = pytest.mark.cluster
SRV = "_beiran._tcp.beiran.test"


def test_dns_targets_outside_peer_cidrs_are_never_contacted(cluster, dnsmasq):
    internal = CountingListener("127.0.0.8")
    try:
        b_ip = cluster.ip(1)
        dnsmasq.set_records(srv={SRV: [("internal.beiran.test", internal.port), ("b.beiran.test", 8888)]},
                            hosts={"internal.beiran.test": ["127.0.0.8"], "b.beiran.test": [b_ip]})
        cfg = {"peer_cidrs": [f"{cluster.ip(0).rsplit('.', 1)[0]}.0/24"],
               "plugins": {"dns": {"names": [SRV], "nameservers": [dnsmasq.address], "interval": 1,
                                   "timeout": 1, "probe_timeout": 1}}}
        a = cluster.add(cfg, peers=None)
        b = cluster.add({"peer_cidrs": cfg["peer_cidrs"]}, peers=None)
        wait_until(lambda: b.uuid in a.online_peers(), 15, what="the in-policy target to be joined")
        time.sleep(2.5)  # a few more refreshes
        targets = {t["url"]: t for t in a.api("GET", "/dns/status")["targets"]}
        print(f"\nconnections to the out-of-policy target: {internal.connections}")
        assert internal.connections == 0, internal.requests[:3]
        assert "peer_cidrs" in targets[internal.url]["detail"]
    finally:
        internal.stop()
