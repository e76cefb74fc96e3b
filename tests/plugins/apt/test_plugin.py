"""The plugin in the daemon: a proxy that listens on loopback is not announced as `_apt_proxy._tcp`
through the discovery plugins (here a stand-in one; where it is announced, and how, is
tests/integration/test_apt_advertise.py), and a bad `[plugins.apt]` section fails the plugin, not
the daemon."""

from __future__ import annotations

import http.client
import os
from pathlib import Path

import pytest

from beiran_testkit.aptclient import APT_PORT, add_nodes, apt_config
from beiran_testkit.daemon import wait_until

pytestmark = pytest.mark.cluster

FAKE_DISCOVERY = '''
import json
from beiran.plugin import BaseDiscoveryPlugin


class FakeDiscovery(BaseDiscoveryPlugin):
    async def advertise(self, service_type, port, properties, only=None):
        with open(self.ctx.config.data_dir / "advertised.jsonl", "a") as fh:
            fh.write(json.dumps([service_type, port, properties]) + "\\n")
        return True


PLUGIN = FakeDiscovery
'''


def extra_plugins(tmp: Path) -> dict[str, str]:
    pkg = tmp / "beiran_plugins" / "fakedisc"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text('__version__ = "0.0"\n')
    (pkg / "plugin.py").write_text(FAKE_DISCOVERY)
    return {"PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(tmp)]))}


def test_loopback_proxy_is_not_advertised_and_bad_config_fails_only_the_plugin(cluster, tmp_path):
    (node,) = add_nodes(cluster, 1, env=extra_plugins(tmp_path / "extra"))
    wait_until(lambda: "proxy not advertised" in node.log(), 15, what="the apt plugin's advertising decision")
    assert f"it listens on {node.ip} (loopback)" in node.log()
    assert not (node.data_dir / "advertised.jsonl").exists()  # no discovery plugin was asked

    # what auto-apt-proxy probes for: apt-cacher-ng's status line on `GET /`, and a page for a person
    conn = http.client.HTTPConnection(node.ip, APT_PORT, timeout=10)
    conn.request("GET", "/")
    resp = conn.getresponse()
    body = resp.read().decode()
    conn.close()
    assert (resp.status, resp.reason) == (406, "Usage Information")
    assert resp.getheader("Content-Type").startswith("text/html") and "beiran apt configure" in body

    cfg = apt_config(cluster.ip(len(cluster.nodes)), keyrings="not-a-list", colour="blue")
    bad = cluster.add(cfg, peers=None)
    plugins = {p["name"]: p for p in bad.api("GET", "/status")["plugins"]}
    assert plugins["apt"]["status"] == "error" and "unknown setting(s) colour" in plugins["apt"]["error"]
    assert bad.api("GET", "/ping")["pong"] is True
