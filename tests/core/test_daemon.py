"""Core daemon: identity, listeners, admin-only routes, bad input, plugin failures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from beiran_testkit.daemon import Daemon, wait_until

pytestmark = pytest.mark.cluster


def test_three_daemons_side_by_side_keep_their_uuid(cluster):
    nodes = cluster.start(3)
    uuids = [n.tcp("GET", "/info")[2] for n in nodes]
    uuids = [json.loads(u)["uuid"] for u in uuids]
    assert len(set(uuids)) == 3
    for node, uuid in zip(nodes, uuids, strict=True):
        assert (node.data_dir / "node-uuid").read_text().strip() == uuid
    nodes[1].stop()
    nodes[1].start()
    assert json.loads(nodes[1].tcp("GET", "/info")[2])["uuid"] == uuids[1]


def test_node_list_and_probe_over_the_socket_admin_refused_over_tcp(cluster):
    a = cluster.add(peers=None)
    b = cluster.add(peers=None)
    assert a.online_peers() == set()
    status, _, body = a.tcp("POST", "/nodes?cmd=probe", json.dumps({"address": b.url}).encode())
    assert status == 403 and json.loads(body)["error"] == "forbidden"
    assert a.tcp("GET", "/config")[0] == 403
    assert a.tcp("GET", "/blobs")[0] == 403
    out = subprocess.run([sys.executable, "-m", "beiran", "--socket", a.socket, "node", "probe", b.url, "--json"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["uuid"] == b.uuid
    wait_until(lambda: b.uuid in a.online_peers(), 10, what="probed node online")
    out = subprocess.run([sys.executable, "-m", "beiran", "--socket", a.socket, "node", "list", "--json"],
                         capture_output=True, text=True, timeout=60)
    listed = {n["uuid"]: n for n in json.loads(out.stdout)}
    assert listed[b.uuid]["status"] == "online" and "probe" in listed[b.uuid]["found_by"]
    assert listed[a.uuid].get("self")
    # the other side sees the connection too, one node per UUID
    wait_until(lambda: a.uuid in b.online_peers(), 10, what="reverse view")
    assert [n["uuid"] for n in b.nodes()].count(a.uuid) == 1


def test_bad_input_gets_clear_errors_and_daemon_stays_up(cluster):
    a = cluster.add(peers=None)
    status, _, body = a.request("POST", "/nodes?cmd=probe", raw=b"{not json",
                                headers={"Content-Type": "application/json"})
    assert status == 400 and json.loads(body)["error"] == "invalid_json"
    status, _, body = a.request("POST", "/nodes?cmd=probe", raw=b"x" * (2 << 20))
    assert status == 413 and json.loads(body)["error"] == "payload_too_large"
    status, _, body = a.request("GET", "/no/such/route")
    assert status == 404 and json.loads(body)["error"] == "not_found"
    status, _, body = a.request("POST", "/nodes?cmd=explode", {})
    assert status == 400 and json.loads(body)["error"] == "unknown_command"
    assert "probe" in json.loads(body)["message"]
    status, _, body = a.request("POST", "/nodes?cmd=probe", {"address": "127.0.0.1:1"})
    assert status == 502 and "cannot reach" in json.loads(body)["message"]
    status, _, body = a.request("POST", "/nodes?cmd=probe", {"address": "ftp://x/y"})
    assert status == 400
    assert a.api("GET", "/ping")["pong"] is True


def _broken_plugins(tmp: Path) -> str:
    """A plugins dir with one plugin raising in start() and one failing to import."""
    for name, body in {
        "kaboom": ("from beiran.plugin import BaseInterfacePlugin\n\n"
                   "class Kaboom(BaseInterfacePlugin):\n"
                   "    async def start(self):\n        raise RuntimeError('cannot start on purpose')\n\n"
                   "PLUGIN = Kaboom\n"),
        "noimport": "import this_module_does_not_exist_anywhere\n",
    }.items():
        pkg = tmp / "beiran_plugins" / name
        pkg.mkdir(parents=True)
        (pkg / "__init__.py").write_text('__version__ = "9.9"\n')
        (pkg / "plugin.py").write_text(body)
    return str(tmp)


@pytest.mark.each_plugin  # an installed plugin changes what this shows
def test_broken_plugins_and_unknown_config_keep_the_daemon_up(cluster, tmp_path):
    extra = _broken_plugins(tmp_path / "extra")
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), extra]))}
    node = cluster.add(config={"plugins": {"nosuchplugin": {"enabled": True}}, "log_level": "info"},
                       peers=None, env=env)
    plugins = {p["name"]: p for p in node.api("GET", "/status")["plugins"]}
    assert plugins["kaboom"]["status"] == "error"
    assert "cannot start on purpose" in plugins["kaboom"]["error"]
    assert plugins["noimport"]["status"] == "error"
    assert "this_module_does_not_exist_anywhere" in plugins["noimport"]["error"]
    assert "nosuchplugin" in node.log() and "not installed" in node.log()
    others = [p for n, p in plugins.items() if n not in ("kaboom", "noimport")]
    # "disabled": the test kit turns zeroconf off unless a test configures it (mDNS on loopback)
    # (degraded: the k8s plugin is up and says it has no container runtime to talk to)
    assert all(p["status"] in ("ready", "disabled", "degraded") for p in others), others
    assert node.api("GET", "/ping")["pong"] is True
    assert "Traceback" not in node.log()


def test_second_daemon_on_same_data_dir_is_refused(cluster, tmp_path):
    a = cluster.add(peers=None)
    twin = Daemon(cluster.base, "twin", a.ip, port=8899, config={"data_dir": str(a.data_dir)})
    twin.start(wait=False)
    assert twin.proc.wait(30) != 0
    assert "already running" in twin.log()
    assert a.api("GET", "/ping")["pong"] is True


def test_stale_socket_does_not_block_start_and_sigterm_cleans_up(cluster):
    a = cluster.add(peers=None)
    a.kill()
    assert Path(a.socket).exists()  # left behind by SIGKILL
    a.start()
    assert a.api("GET", "/ping")["pong"] is True
    assert a.stop() == 0
    assert not Path(a.socket).exists()


def test_cli_without_daemon_says_so_in_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "beiran", "--socket", str(tmp_path / "none.sock"), "node", "list"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "not running" in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_config_env_overrides_file_and_flags_override_env(tmp_path):
    from beiran.config import load_config

    cfg = tmp_path / "c.toml"
    cfg.write_text('listen = "127.0.0.5:9000"\nlog_level = "warning"\n[store]\nmax_size = "1G"\n'
                   '[plugins.dns]\nenabled = false\n')
    c = load_config(cfg, environ={"BEIRAN_LOG_LEVEL": "error", "BEIRAN_STORE__MAX_SIZE": "2G",
                                  "BEIRAN_PEERS": "127.0.0.9:8888,http://127.0.0.8:1"},
                    overrides={"log_level": "debug"})
    assert c.listen == "127.0.0.5:9000"
    assert c.log_level == "debug"
    assert c.store.max_size == 2 << 30
    assert c.peers == ["http://127.0.0.9:8888", "http://127.0.0.8:1"]
    assert c.plugin_enabled("dns") is False and c.plugin_enabled("docker") is True


def test_config_errors_are_one_line(tmp_path):
    from beiran.config import load_config
    from beiran.errors import ConfigError

    bad = tmp_path / "bad.toml"
    bad.write_text("listen = \n")
    with pytest.raises(ConfigError, match=r"bad\.toml"):
        load_config(bad, environ={})
    bad.write_text('nonsense_key = 1\n')
    with pytest.raises(ConfigError, match="unknown setting nonsense_key"):
        load_config(bad, environ={})
    out = subprocess.run([sys.executable, "-m", "beiran", "daemon", "--config", str(bad)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "unknown setting" in out.stderr and "Traceback" not in out.stderr


def test_testing_switches_need_the_environment_too(tmp_path):
    """A config file alone cannot make a node tamper with what it serves."""
    from beiran.config import load_config
    from beiran.errors import ConfigError

    cfg = tmp_path / "c.toml"
    cfg.write_text("[testing]\ncorrupt_serving = true\n")
    with pytest.raises(ConfigError, match="BEIRAN_TESTING_HOOKS=1"):
        load_config(cfg, environ={})
    assert load_config(cfg, environ={"BEIRAN_TESTING_HOOKS": "1"}).testing == {"corrupt_serving": True}
    cfg.write_text("[testing]\nfsync = false\n")
    with pytest.raises(ConfigError, match=r"unknown setting testing\.fsync"):
        load_config(cfg, environ={"BEIRAN_TESTING_HOOKS": "1"})
    cfg.write_text("[store]\nfsync = false\n")
    assert load_config(cfg, environ={}).store.fsync is False


@pytest.mark.each_plugin  # an installed plugin changes what this shows
def test_node_info_version_and_config_through_the_cli(cluster):
    """The read-only CLI commands against a real daemon: this node, another node by UUID, the
    versions, and the running daemon's config with its secret masked."""
    n1, n2 = cluster.start(2, config={"cluster_token": "do-not-show-me"})
    me = n1.cli("node", "info", "--json")
    assert me["uuid"] == n1.uuid and me["url"] == n1.url
    other = n1.cli("node", "info", n2.uuid, "--json")
    assert other["uuid"] == n2.uuid
    assert n2.uuid in n1.cli("node", "info", n2.uuid)  # the table names it too
    from beiran import __version__
    assert n1.cli("node", "version", "--json") == {"cli": __version__, "daemon": __version__}
    cfg = n1.cli("config", "--json")
    assert cfg["listen"] == f"{n1.ip}:{n1.port}" and cfg["cluster_token"] == "***"
    assert "do-not-show-me" not in n1.cli("config")
    out = subprocess.run([sys.executable, "-m", "beiran", "--socket", n1.socket, "node", "info", "f" * 32],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
