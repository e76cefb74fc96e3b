"""DNS discovery with real daemons and a real DNS server (dnsmasq on loopback): SRV records with
several ports, records removed, failing servers and bad targets. No node has a static peer unless
the test says so."""

from __future__ import annotations

import json
import signal
from typing import Any

import pytest

from beiran_testkit.daemon import Daemon, wait_until

pytestmark = pytest.mark.cluster
SRV = "_beiran._tcp.beiran.test"


def dns_config(server: Any, names: list[str], **extra: Any) -> dict[str, Any]:
    return {"plugins": {"dns": {"names": names, "nameservers": [server.address], **extra}}}








def test_srv_record_lists_three_daemons_on_different_ports_and_a_removed_record_goes_offline(cluster, dnsmasq):
    """Must show 3. The records' TTL (1 s) is shorter than `interval` (30 s), so each refresh follows
    the TTL. The removed node is frozen (SIGSTOP) and the heartbeat timeout is long, so only the DNS
    refresh can take it offline: not a goodbye, not a heartbeat."""
    ports = [8881, 8882, 8883]
    hosts = {f"n{i + 1}.beiran.test": [cluster.ip(i)] for i in range(3)}
    srv = [(f"n{i + 1}.beiran.test", port) for i, port in enumerate(ports)]
    dnsmasq.set_records(srv={SRV: srv}, hosts=hosts)
    cfg = {"heartbeat_timeout": 60, **dns_config(dnsmasq, [SRV], interval=30)}
    nodes = []
    for port in ports:
        node = cluster.add(cfg, peers=None, start=False)
        node.port, node.config["listen"] = port, f"{node.ip}:{port}"
        nodes.append(node)
    for node in nodes:
        node.start(wait=False)
    for node in nodes:
        node.wait_ready()
    for node in nodes:
        others = {o.uuid for o in nodes if o is not node}
        wait_until(lambda node=node, others=others: all(
            node.entry(o)["status"] == "online" and "dns" in node.entry(o)["found_by"] for o in nodes
            if o is not node), 15, what=f"{node.name} to find the others through DNS")
    n1, n2, n3 = nodes
    listed = n1.cli("node", "list", "--json")
    assert sorted(n["uuid"] for n in listed) == sorted(n.uuid for n in nodes)
    status = n1.api("GET", "/dns/status")
    assert status["names"][0]["state"] == "ok" and status["names"][0]["ttl"] == 1
    targets = {t["url"]: t for t in status["targets"]}
    assert targets[n1.url]["state"] == "self"  # in its own SRV record: probed, recognised, not dialed
    assert targets[n2.url]["state"] == targets[n3.url]["state"] == "peer"
    assert targets[n3.url]["uuid"] == n3.uuid
    looked_up = n2.cli("dns", "lookup", SRV, "--json")
    assert sorted(looked_up["targets"]) == sorted(n.url for n in nodes)
    assert "peer" in n2.cli("dns", "status")

    n3.proc.send_signal(signal.SIGSTOP)
    try:
        dnsmasq.set_records(srv={SRV: srv[:2]})
        for node in (n1, n2):
            wait_until(lambda node=node: node.entry(n3)["status"] == "offline", 10,
                       what=f"{node.name}: n3 offline after its record went")
        assert n2.uuid in n1.online_peers() and n1.uuid in n2.online_peers()
        assert n3.url not in {t["url"] for t in n1.api("GET", "/dns/status")["targets"]}
        assert "is no longer in DNS" in n1.log()
    finally:
        n3.proc.send_signal(signal.SIGCONT)


def test_failing_dns_and_bad_targets_are_logged_once_and_the_daemon_stays_up(cluster, dnsmasq, blackhole):
    """Must show 5 (dns): a DNS server that times out, names the server refuses or does not know,
    SRV targets where nothing listens or nothing resolves, and a bad config: logged (once per
    state change), ignored, the daemon stays up."""
    a_ip = cluster.ip(0)
    dnsmasq.set_records(
        srv={SRV: [("a.beiran.test", 8888), ("dead.beiran.test", 1), ("nowhere.beiran.test", 8888)]},
        hosts={"a.beiran.test": [a_ip], "dead.beiran.test": [cluster.ip(30)]})
    names = [SRV, "gone.beiran.test", "_beiran._tcp.elsewhere.test"]
    a = cluster.add(dns_config(dnsmasq, names, interval=1, timeout=1, probe_timeout=1), peers=None)
    # a node whose only nameserver never answers
    timed_out = cluster.add(dns_config(blackhole, [SRV], interval=1, timeout=0.5), peers=None)

    def names_of(node: Daemon) -> dict[str, dict]:
        return {n["name"]: n for n in node.api("GET", "/dns/status")["names"]}
    wait_until(lambda: names_of(timed_out)[SRV]["failures"] >= 3, 15, what="three timed-out lookups")
    assert names_of(timed_out)[SRV]["state"] == "failing"
    assert "no answer within" in names_of(timed_out)[SRV]["detail"]
    assert timed_out.log().count(f"dns: {SRV}: failing") == 1  # once, not per refresh

    wait_until(lambda: names_of(a)[SRV]["lookups"] >= 3, 15, what="three lookups on a")
    got = names_of(a)
    assert got[SRV]["state"] == "ok" and got["gone.beiran.test:8888"]["state"] == "empty"
    assert got["_beiran._tcp.elsewhere.test"]["state"] == "failing"  # REFUSED: not our server's zone
    targets = {t["url"]: t for t in a.api("GET", "/dns/status")["targets"]}
    assert set(targets) == {a.url, f"http://{cluster.ip(30)}:1"}  # nowhere.beiran.test has no address
    assert targets[a.url]["state"] == "self"
    assert targets[f"http://{cluster.ip(30)}:1"]["state"] == "unreachable"
    log = a.log()
    assert log.count(f"http://{cluster.ip(30)}:1 (from {SRV}): unreachable") == 1
    assert log.count("dns: _beiran._tcp.elsewhere.test: failing") == 1
    assert a.nodes(all=True)[1:] == []  # nothing connected

    status, _, body = a.request("GET", "/dns/lookup?name=bad%20name")
    assert status == 400 and "not a DNS name" in json.loads(body)["message"]
    status, _, body = a.request("GET", "/dns/lookup?name=_beiran._tcp.elsewhere.test")
    assert status == 502 and "REFUSED" in json.loads(body)["message"]

    broken = cluster.add({"plugins": {"dns": {"names": ["no spaces allowed"], "interval": "often"}}}, peers=None)
    plugins = {p["name"]: p for p in broken.api("GET", "/status")["plugins"]}
    assert plugins["dns"]["status"] == "error" and "interval" in plugins["dns"]["error"]
    assert "interval: expected a positive number of seconds" in broken.log()
    for node in (a, timed_out, broken):
        assert node.api("GET", "/ping")["pong"] is True
    assert a.tracebacks("beiran_plugins/dns/") == timed_out.tracebacks("beiran_plugins/dns/") == []


def test_reload_applies_new_names_live_and_refuses_a_bad_section(cluster, dnsmasq):
    """`systemctl reload` (SIGHUP) with a changed [plugins.dns]: the plugin applies it live."""
    from beiran_testkit.daemon import write_toml

    b = cluster.add(peers=None)
    dnsmasq.set_records(srv={SRV: [("n1.beiran.test", b.port)]}, hosts={"n1.beiran.test": [b.ip]})
    a = cluster.add(dns_config(dnsmasq, [], interval=30), peers=None)
    assert b.uuid not in a.online_peers()

    def reload(section: dict[str, Any]) -> None:
        a.config["plugins"] = {**a.config["plugins"], "dns": section}
        write_toml(a.dir / "config.toml", a.config)
        a.proc.send_signal(signal.SIGHUP)

    reload(dns_config(dnsmasq, [SRV], interval=30)["plugins"]["dns"])
    wait_until(lambda: b.uuid in a.online_peers() and "dns" in a.entry(b)["found_by"], 30,
               what="the reloaded name's target found")
    assert "plugins.dns" in a.log().split("reloaded")[-1]
    reload({"names": ["no spaces allowed"], "nameservers": [dnsmasq.address]})
    wait_until(lambda: "running settings are kept" in a.log(), 10, what="the bad section refused")
    assert a.alive
    assert a.api("GET", "/dns/status")["names"][0]["name"] == SRV and b.uuid in a.online_peers()
