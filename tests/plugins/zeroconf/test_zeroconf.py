"""Zeroconf discovery with real daemons and real mDNS: on loopback (each daemon on its own 127.x
address, mDNS bound to it) and over a bridge between network namespaces the test creates.

No node has a static peer. Each test uses a cluster name of its own (`zc_cluster`) because every
test run on this machine shares the loopback interface's multicast."""

from __future__ import annotations

import os
import signal
import uuid
from pathlib import Path
from typing import Any

import pytest

from beiran_testkit.daemon import Daemon, wait_until
from beiran_testkit.fixtures import random_blob

pytestmark = pytest.mark.cluster

ADVERTISER = '''\
from beiran.plugin import BaseInterfacePlugin


class Advertiser(BaseInterfacePlugin):
    """What the apt plugin does with `_apt_proxy._tcp`: announce a service through every discovery
    plugin (the dns one cannot and says so). Its own type, so the real apt plugin never interferes."""

    async def start(self):
        for plugin in self.ctx.plugins.of_kind("discovery"):
            done = await plugin.advertise("_zc_test._tcp", 3142, {"path": "/", "node": self.ctx.identity.uuid})
            assert done == (plugin.name == "zeroconf"), (plugin.name, done)


PLUGIN = Advertiser
'''


def zc_config(cluster_name: str, **extra: Any) -> dict[str, Any]:
    return {"plugins": {"zeroconf": {"cluster": cluster_name, **extra}}}




def services(node: Daemon) -> dict[str, dict]:
    """The `_beiran._tcp` services a node has heard, by instance name."""
    return {s["name"].split(".", 1)[0]: s for s in node.api("GET", "/zeroconf/status")["services"]}


def found_by_zeroconf(node: Daemon) -> set[str]:
    """Nodes this one sees online and found (also) through zeroconf, not only by their dialing in."""
    return {n["uuid"] for n in node.nodes() if n["status"] == "online" and "zeroconf" in n["found_by"]}




def status_of(node: Daemon, other: Daemon) -> str:
    for n in node.nodes(all=True):
        if n["uuid"] == other.uuid:
            return n["status"]
    return "unknown"


def advertiser_path(tmp: Path) -> str:
    pkg = tmp / "beiran_plugins" / "zcadvert"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text('__version__ = "1.0"\n')
    (pkg / "plugin.py").write_text(ADVERTISER)
    return str(tmp)


def test_three_daemons_without_peers_find_each_other_and_see_departures(cluster, zc_cluster, announcer,
                                                                         tmp_path):
    """Must show 1 (and the advertise hook other plugins use)."""
    extra = advertiser_path(tmp_path / "extra")
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), extra]))}
    nodes = [cluster.add(zc_config(zc_cluster), peers=None, start=False, env=env if i == 0 else None)
             for i in range(3)]
    for node in nodes:
        node.start(wait=False)
    for node in nodes:
        node.wait_ready()
    for node in nodes:
        others = {o.uuid for o in nodes if o is not node}
        wait_until(lambda node=node, others=others: others <= found_by_zeroconf(node), 10,
                   what=f"{node.name} to see the other two online, found by zeroconf")
    n1, n2, n3 = nodes
    for node in nodes:
        listed = node.cli("node", "list", "--json")
        assert sorted(n["uuid"] for n in listed) == sorted(o.uuid for o in nodes)  # each once
        for entry in listed:
            if entry["uuid"] != node.uuid:
                assert entry["status"] == "online" and "zeroconf" in entry["found_by"], entry
    heard = services(n1)
    assert heard[n1.uuid]["state"] == "self"
    assert heard[n2.uuid]["state"] == heard[n3.uuid]["state"] == "peer"
    assert heard[n2.uuid]["txt"]["uuid"] == n2.uuid and heard[n2.uuid]["txt"]["port"] == "8888"
    assert "peer" in n1.cli("zeroconf", "status")

    # another plugin announced a service through the discovery plugins (before zeroconf started)
    svc = announcer.lookup("_zc_test._tcp.local.", f"{n1.uuid}._zc_test._tcp.local.")
    assert svc is not None and svc.port == 3142 and svc.properties[b"node"] == n1.uuid.encode()
    assert svc.parsed_addresses() == [n1.ip]
    plugins = {p["name"]: p for p in n1.api("GET", "/status")["plugins"]}
    assert plugins["zcadvert"]["status"] == "ready", plugins["zcadvert"]  # its asserts held

    # SIGTERM: the others see it offline at once, and its goodbye packets withdraw the service
    n3.stop(signal.SIGTERM)
    for node in (n1, n2):
        wait_until(lambda node=node: status_of(node, n3) == "offline", 3, what=f"{node.name}: n3 offline")
        wait_until(lambda node=node: n3.uuid not in services(node), 3, what=f"{node.name}: n3's goodbye")
    # back again: found again
    n3.start()
    wait_until(lambda: n3.uuid in n1.online_peers() and n3.uuid in n2.online_peers(), 10, what="n3 back")
    # SIGKILL: no goodbye; offline within the heartbeat timeout
    n2.kill()
    timeout = n1.config["heartbeat_timeout"] + n1.config["heartbeat_interval"]
    for node in (n1, n3):
        wait_until(lambda node=node: status_of(node, n2) == "offline", timeout, what=f"{node.name}: n2 offline")
    assert n1.tracebacks("beiran_plugins/zeroconf/") == []


def test_bad_announcements_are_ignored_and_a_goodbye_drops_the_peer(cluster, zc_cluster, announcer):
    """Must show 5 (zeroconf): malformed TXT, an unreachable address, a service claiming another
    node's UUID, another cluster's node: logged, ignored, the daemon stays up. A goodbye for a real
    peer drops it at once."""
    a = cluster.add(zc_config(zc_cluster, probe_timeout=1), peers=None)
    b = cluster.add(zc_config(zc_cluster), peers=None)
    d = cluster.add(peers=None)  # zeroconf off: the test announces it
    wait_until(lambda: b.uuid in a.online_peers(), 10, what="a and b to find each other")
    good = {"cluster": zc_cluster, "txtvers": "1"}
    bad = {
        "no-uuid": announcer.info("no-uuid", d.ip, 8888, {**good, "port": "8888"}),
        "bad-uuid": announcer.info("bad-uuid", d.ip, 8888, {**good, "uuid": "not-a-uuid"}),
        "bad-port": announcer.info("bad-port", d.ip, 8888, {**good, "uuid": str(uuid.uuid4()), "port": "eighty"}),
        "binary": announcer.info("binary", d.ip, 8888, {b"uuid": b"\xff\xfe\x00garbage", b"cluster": b"x"}),
        "raw": announcer.info("raw", d.ip, 8888, b"\x40truncated-length-byte"),
        "unreachable": announcer.info("unreachable", cluster.ip(30), 1, {**good, "uuid": str(uuid.uuid4()),
                                                                         "port": "1"}),
        "impostor": announcer.info("impostor", d.ip, 8888, {**good, "uuid": b.uuid, "port": "8888"}),
        "foreign": announcer.info("foreign", d.ip, 8888, {"cluster": "someone-else", "uuid": d.uuid}),
    }
    announcer.announce(*bad.values())
    expected = {"no-uuid": "malformed", "bad-uuid": "malformed", "bad-port": "malformed", "binary": "malformed",
                "raw": "malformed", "unreachable": "unreachable", "impostor": "wrong-node",
                "foreign": "other-cluster"}

    def states() -> dict[str, str]:
        heard = services(a)
        return {k: heard[k]["state"] for k in expected if k in heard}
    wait_until(lambda: states() == expected, 15, what="a to classify every bad announcement")
    assert d.uuid not in {n["uuid"] for n in a.nodes(all=True)}  # never connected through a lie
    assert b.uuid in a.online_peers()
    assert services(b)["impostor"]["state"] == "self"  # b's own UUID: b ignores it as itself
    log = a.log()
    for name in ("no-uuid", "bad-uuid", "bad-port", "binary", "raw"):
        assert f"'{name}._beiran._tcp.local.': malformed" in log
    assert log.count("'unreachable._beiran._tcp.local.': unreachable") == 1  # once, however many retries
    assert "answers as node" in services(a)["impostor"]["detail"]

    # the impostor's goodbye must not drop the real b
    announcer.withdraw(bad["impostor"])
    wait_until(lambda: "impostor" not in services(a), 5, what="impostor withdrawn")
    assert b.uuid in a.online_peers()

    # a correct announcement for d connects it; its goodbye drops it at once
    proper = announcer.info("d-node", d.ip, 8888, {**good, "uuid": d.uuid, "port": "8888"})
    announcer.announce(proper)
    wait_until(lambda: d.uuid in a.online_peers(), 10, what="d connected through its announcement")
    assert "zeroconf" in next(n for n in a.nodes() if n["uuid"] == d.uuid)["found_by"]
    announcer.withdraw(proper)
    wait_until(lambda: status_of(a, d) == "offline", 3, what="d offline after its goodbye")
    assert a.api("GET", "/ping")["pong"] is True and b.uuid in a.online_peers()
    assert a.tracebacks("beiran_plugins/zeroconf/") == []


def test_three_daemons_in_network_namespaces_find_each_other_and_share_a_blob(netns_lan, zc_cluster):
    """Must show 2: three namespaces on a bridge; discovery over the link, then a blob added on one
    node is fetched by another from it. The third listens on 0.0.0.0 (mDNS on all its interfaces,
    IPv4 and IPv6) and is re-announced when it gains an address."""
    lan = netns_lan(3, ipv6=True)
    cfg = zc_config(zc_cluster, address_check_interval=1)
    n1, n2 = lan.daemon(0, cfg), lan.daemon(1, cfg)
    n3 = lan.daemon(2, cfg, listen="0.0.0.0:8888")
    nodes = [n1, n2, n3]
    for node in nodes:
        node.start(wait=False)
    for node in nodes:
        node.wait_ready()
    for node in nodes:
        others = {o.uuid for o in nodes if o is not node}
        wait_until(lambda node=node, others=others: others <= found_by_zeroconf(node), 10,
                   what=f"{node.name} to see the others over the bridge")
    assert services(n1)[n2.uuid]["url"] == f"http://{lan.hosts[1].ip}:8888"
    heard_n3 = services(n1)[n3.uuid]
    assert lan.hosts[2].ip in heard_n3["addresses"] and lan.hosts[2].ip6 in heard_n3["addresses"]
    assert set(n3.api("GET", "/zeroconf/status")["network"]["announce"]) == {lan.hosts[2].ip, lan.hosts[2].ip6}

    data, digest = random_blob(3 << 20, 7)
    assert n1.add_blob(data) == digest
    wait_until(lambda: any(b["digest"] == digest for b in n2.api("GET", "/blobs?all=true")["blobs"]), 10,
               what="n2 to learn that n1 holds the blob")
    result = n2.fetch(digest, len(data))
    assert "error" not in result, result
    assert n2.blob(digest) == data
    assert n2.metrics()["beiran_fetch_bytes_total{source=peer}"] == len(data)

    # n3 gains an address: it announces it, and the others hear it
    new_ip = f"{lan.subnet}.33"
    lan.run(2, "ip", "addr", "add", f"{new_ip}/24", "dev", "eth0")
    wait_until(lambda: new_ip in services(n1)[n3.uuid]["addresses"], 10, what="n3's new address announced")
    assert n3.uuid in n1.online_peers()
