"""The plugin in the daemon: it announces `_apt_proxy._tcp` through whatever discovery plugin is
loaded (here a stand-in one), and a bad `[plugins.apt]` section fails the plugin, not the daemon."""

from __future__ import annotations

import json
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
    async def advertise(self, service_type, port, properties):
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


def test_proxy_is_advertised_and_bad_config_fails_only_the_plugin(cluster, tmp_path):
    (node,) = add_nodes(cluster, 1, env=extra_plugins(tmp_path / "extra"))
    ads = node.data_dir / "advertised.jsonl"
    wait_until(ads.exists, 15, what="the apt proxy advertised")
    service, port, props = json.loads(ads.read_text().splitlines()[0])
    assert (service, port, props["beiran"]) == ("_apt_proxy._tcp.local.", APT_PORT, node.uuid)

    cfg = apt_config(cluster.ip(len(cluster.nodes)), keyrings="not-a-list", colour="blue")
    bad = cluster.add(cfg, peers=None)
    plugins = {p["name"]: p for p in bad.api("GET", "/status")["plugins"]}
    assert plugins["apt"]["status"] == "error" and "unknown setting(s) colour" in plugins["apt"]["error"]
    assert bad.api("GET", "/ping")["pong"] is True
