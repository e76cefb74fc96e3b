"""How other hosts find a node's apt proxy, with the real tools and network namespaces as hosts:

- Debian's stock `auto-apt-proxy` (probes port 3142 of 127.0.0.1 and of the default gateway with
  `GET /`, wants apt-cacher-ng's `406 Usage Information`) detects a Beiran node's proxy, on the
  node itself and from a host whose gateway is the node;
- `_apt_proxy._tcp` over mDNS (what squid-deb-proxy-client browses for) is announced only on the
  addresses where the proxy listens and admits the clients, and not at all for a proxy that
  listens on loopback: a python-zeroconf browser in another namespace sees exactly that.
"""

from __future__ import annotations

import json
import re
import tomllib
import uuid
from pathlib import Path
from typing import Any

import pytest

from beiran_testkit.aptclient import APT_PORT, apt_config
from beiran_testkit.aptdetect import mdns_browse, run_auto_apt_proxy
from beiran_testkit.daemon import wait_until
from beiran_testkit.netns import NetnsDaemon, NetnsLan

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
APT_PROXY = "_apt_proxy._tcp.local."
BEIRAN = "_beiran._tcp.local."
README = Path(__file__).resolve().parents[2] / "README.md"


def readme_lan_config() -> dict[str, Any]:
    """The README's "share a node's proxy with its LAN" config, as written there."""
    text = README.read_text()
    match = re.search(r"<!-- apt-lan-config[^>]*-->\s*```toml\n(.*?)```", text, re.S)
    assert match, "README.md lost its apt-lan-config snippet"
    return tomllib.loads(match.group(1))


def apt_node(lan: NetnsLan, index: int, apt_listen: str, client_cidrs: list[str],
             zeroconf: dict[str, Any] | None = None, listen: str | None = None) -> NetnsDaemon:
    cfg = apt_config(lan.hosts[index].ip)
    cfg["plugins"]["apt"]["listen"] = apt_listen
    if zeroconf is not None:
        cfg["plugins"]["zeroconf"] = zeroconf
    cfg["client_cidrs"] = client_cidrs
    return lan.daemon(index, cfg, listen=listen)


def start_all(*nodes: NetnsDaemon) -> None:
    for node in nodes:
        node.start(wait=False)
    for node in nodes:
        node.wait_ready()  # every plugin started: the apt proxy listens
        plugins = {p["name"]: p for p in node.api("GET", "/status")["plugins"]}
        assert plugins["apt"]["status"] == "ready", plugins["apt"]


def test_auto_apt_proxy_detects_the_proxy_on_the_node_itself(netns_lan, auto_apt_proxy, tmp_path):
    """A node whose apt proxy listens on 127.0.0.1:3142 (the default): stock auto-apt-proxy run on
    that node (in its namespace) prints the proxy URL."""
    lan = netns_lan(1)
    node = apt_node(lan, 0, "127.0.0.1:3142", ["127.0.0.0/8"])
    start_all(node)
    out = run_auto_apt_proxy(auto_apt_proxy, lan.hosts[0], tmp_path / "aap")
    assert out.stdout.strip() == f"http://127.0.0.1:{APT_PORT}", (out.stdout, out.stderr)


def test_auto_apt_proxy_detects_the_proxy_on_the_default_gateway(netns_lan, auto_apt_proxy, tmp_path):
    """A client host whose default gateway is a Beiran node with the apt proxy on its LAN address
    and client_cidrs admitting the LAN: stock auto-apt-proxy on the client prints the gateway's
    proxy. A client that client_cidrs does not admit is refused, so it detects nothing there."""
    lan = netns_lan(3)
    gw, client, outsider = lan.hosts
    node = apt_node(lan, 0, f"{gw.ip}:{APT_PORT}", ["127.0.0.0/8", f"{client.ip}/32"])
    start_all(node)
    for host in (client, outsider):
        lan.run(host.index, "ip", "route", "add", "default", "via", gw.ip)
    out = run_auto_apt_proxy(auto_apt_proxy, client, tmp_path / "client")
    assert out.stdout.strip() == f"http://{gw.ip}:{APT_PORT}", (out.stdout, out.stderr)

    out = run_auto_apt_proxy(auto_apt_proxy, outsider, tmp_path / "outsider")
    assert out.returncode == 0 and out.stdout.strip() == "", (out.stdout, out.stderr)
    assert f"client {outsider.ip} is not in client_cidrs" in node.log()  # asked, and refused


def test_apt_proxy_is_announced_over_mdns_only_where_it_serves(netns_lan, tmp_path):
    """Three nodes on a bridge, each announcing `_beiran._tcp` on IPv4 and IPv6 (they listen on
    0.0.0.0), and a browser in a fourth namespace:
    - a: proxy on its LAN IPv4 address, client_cidrs admit the IPv6 LAN too -> `_apt_proxy._tcp`
      with the IPv4 address only (where it listens);
    - c: the README's LAN config: proxy on 0.0.0.0, client_cidrs admit 10.0.0.0/8 (the bridge is a
      10.x subnet) -> the IPv4 address only;
    - b: proxy on 127.0.0.1 -> no `_apt_proxy._tcp` at all (and it says so), while its
      `_beiran._tcp` is seen, so the absence is not the browser's doing.
    Through what it resolved, the browser's host reaches a's and c's proxies. Then c's LAN address
    is replaced by one outside its client_cidrs: no address may carry its proxy any more, and it
    withdraws the announcement while it goes on announcing itself."""
    lan = netns_lan(4, ipv6=True)
    zc = {"cluster": f"t-{uuid.uuid4().hex[:12]}"}
    v4_lan, v6_lan = f"{lan.subnet}.0/24", f"{lan.v6}/64"
    a = apt_node(lan, 0, f"{lan.hosts[0].ip}:{APT_PORT}", ["127.0.0.0/8", v4_lan, v6_lan], zc, "0.0.0.0:8888")
    b = apt_node(lan, 1, f"127.0.0.1:{APT_PORT}", ["127.0.0.0/8", v4_lan, v6_lan], zc, "0.0.0.0:8888")
    shared = readme_lan_config()
    assert lan.subnet.startswith("10.")
    c = apt_node(lan, 2, shared["plugins"]["apt"]["listen"], shared["client_cidrs"],
                 {**zc, "address_check_interval": 1}, "0.0.0.0:8888")
    nodes = (a, b, c)
    start_all(*nodes)
    browser_host = lan.hosts[3]

    def announced(node: NetnsDaemon, type_: str) -> dict:
        report = node.api("GET", "/zeroconf/status")
        return next((x for x in report["announced"] if x["type"] == type_), {})

    for node in nodes:
        wait_until(lambda node=node: announced(node, BEIRAN).get("registered"), 15,
                   what=f"{node.name} to announce _beiran._tcp")
    for node in (a, c):
        wait_until(lambda node=node: announced(node, APT_PROXY).get("registered"), 15,
                   what=f"{node.name} to announce its apt proxy")
    # b has decided about its proxy (whichever way) before the browser looks
    wait_until(lambda: "apt: proxy " in b.log() and "advertised" in b.log(), 15, what="b's apt advertisement")

    apt_name = {n.name: f"{n.uuid}.{APT_PROXY}" for n in nodes}
    found = mdns_browse(browser_host, [APT_PROXY, BEIRAN],
                        expect=[apt_name["n1"], apt_name["n3"]] + [f"{n.uuid}.{BEIRAN}" for n in nodes],
                        absent=[apt_name["n2"]])
    services = found["services"]
    for node in nodes:
        assert f"{node.uuid}.{BEIRAN}" in services, (node.name, sorted(services))
    # b: its node is seen, its loopback proxy is not
    assert apt_name["n2"] not in services and apt_name["n2"] not in found["seen"], found
    assert found["absent"][apt_name["n2"]] is None, found["absent"]
    assert "proxy not advertised as _apt_proxy._tcp.local.: it listens on 127.0.0.1 (loopback)" in b.log()
    assert announced(b, APT_PROXY) == {}  # never handed to zeroconf

    # the nodes do announce IPv6 (so "IPv4 only" below is the filter's doing)
    assert lan.hosts[0].ip6 in services[f"{a.uuid}.{BEIRAN}"]["addresses"], services[f"{a.uuid}.{BEIRAN}"]
    assert services[apt_name["n1"]]["addresses"] == [lan.hosts[0].ip], services[apt_name["n1"]]
    assert services[apt_name["n3"]]["addresses"] == [lan.hosts[2].ip], services[apt_name["n3"]]
    for node in (a, c):
        svc = services[apt_name[node.name]]
        assert svc["port"] == APT_PORT and svc["txt"]["beiran"] == node.uuid

    # what squid-deb-proxy-client does next: use the proxy at the resolved address
    for node in (a, c):
        svc = services[apt_name[node.name]]
        url = f"http://{svc['addresses'][0]}:{svc['port']}"
        ping = lan.run(3, "curl", "-s", "--max-time", "10", f"{url}/_beiran/ping")
        assert json.loads(ping.stdout)["uuid"] == node.uuid
        probe = lan.run(3, "curl", "-s", "-i", "--max-time", "10", f"{url}/")
        assert probe.stdout.startswith("HTTP/1.1 406 Usage Information"), probe.stdout[:200]
        assert "beiran apt configure" in probe.stdout

    # c's LAN address is replaced by one its client_cidrs refuse: the proxy is withdrawn
    outside = "192.0.2.3"
    lan.run(2, "ip", "addr", "add", f"{outside}/24", "dev", "eth0")
    lan.run(2, "ip", "addr", "del", f"{lan.hosts[2].ip}/24", "dev", "eth0")
    wait_until(lambda: announced(c, APT_PROXY).get("withheld"), 15, what="c to withdraw its apt proxy")
    assert not announced(c, APT_PROXY)["registered"] and announced(c, APT_PROXY)["addresses"] == []
    beiran_c = f"{c.uuid}.{BEIRAN}"
    wait_until(lambda: outside in announced(c, BEIRAN).get("addresses", []), 15, what="c's new address announced")
    found = mdns_browse(browser_host, [APT_PROXY, BEIRAN], expect=[beiran_c], absent=[apt_name["n3"]], linger=0)
    assert outside in found["services"][beiran_c]["addresses"]  # c is heard, at its new address
    assert found["absent"][apt_name["n3"]] is None, found["absent"]
    assert apt_name["n3"] not in found["seen"], found["seen"]
