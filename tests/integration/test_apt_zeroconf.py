"""The apt plugin advertises its proxy as `_apt_proxy._tcp` (what squid-deb-proxy-client and
auto-apt-proxy browse for) through the real zeroconf plugin: a plain python-zeroconf browser on the
node's address finds it, and the address and port it resolves to are the node's apt proxy."""

from __future__ import annotations

import http.client
import json
import uuid

import pytest

from beiran_testkit.aptclient import APT_PORT, apt_config
from beiran_testkit.daemon import wait_until

pytestmark = pytest.mark.cluster
APT_PROXY = "_apt_proxy._tcp.local."


def test_apt_proxy_is_found_over_mdns_and_answers_as_that_node(cluster):
    zc_mod = pytest.importorskip("zeroconf")
    ip = cluster.ip(0)
    cfg = apt_config(ip)
    cfg["plugins"]["zeroconf"] = {"cluster": f"t-{uuid.uuid4().hex[:12]}"}
    node = cluster.add(cfg, peers=None)

    zc = zc_mod.Zeroconf(interfaces=[ip], ip_version=zc_mod.IPVersion.V4Only)
    names: set[str] = set()

    class Listener(zc_mod.ServiceListener):
        def add_service(self, zc: object, type_: str, name: str) -> None:
            names.add(name)

        def update_service(self, zc: object, type_: str, name: str) -> None:
            names.add(name)

        def remove_service(self, zc: object, type_: str, name: str) -> None:
            names.discard(name)

    browser = zc_mod.ServiceBrowser(zc, APT_PROXY, listener=Listener())
    try:
        def resolved() -> list:
            infos = [zc.get_service_info(APT_PROXY, n, timeout=2000) for n in list(names)]
            return [i for i in infos if i and i.properties.get(b"beiran", b"").decode() == node.uuid]

        wait_until(lambda: resolved(), 20, what="the node's _apt_proxy._tcp service")
        info = resolved()[0]
        assert info.port == APT_PORT
        addresses = info.parsed_addresses()
        assert ip in addresses, addresses

        # what a proxy-detect script would do with it: use it as the proxy
        conn = http.client.HTTPConnection(ip, info.port, timeout=10)
        conn.request("GET", "/_beiran/ping")
        resp = conn.getresponse()
        assert resp.status == 200
        assert json.loads(resp.read())["uuid"] == node.uuid
        conn.close()
    finally:
        browser.cancel()
        zc.close()
