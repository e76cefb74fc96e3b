"""Finding the proxy (`proxy-detect`, also as apt's Proxy-Auto-Detect), `configure`, and a CLI
that starts without the daemon's libraries."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from beiran_testkit.aptclient import AptClient, add_nodes, beiran, proxy_of

HEAVY = ["apt_pkg", "apt", "apt_inst", "tornado", "peewee", "docker", "grpc", "zeroconf", "dns"]
PROBE = """
import json, sys
from beiran.cli.main import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
sys.stdout.flush()
print("\\n@@MODULES@@" + json.dumps(sorted(sys.modules)))
"""


def cli_env(config: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BEIRAN_")}
    if config is not None:
        env["BEIRAN_CONFIG"] = str(config)
    return env


@pytest.mark.parametrize("args", [["apt", "--help"], ["apt", "proxy-detect", "http://x/y"],
                                  ["apt", "configure"]], ids=" ".join)
def test_apt_commands_import_nothing_heavy(args: list[str], tmp_path: Path) -> None:
    env = cli_env()
    env["BEIRAN_SOCKET"] = str(tmp_path / "none.sock")
    env["BEIRAN_CONFIG"] = str(tmp_path / "config.toml")
    (tmp_path / "config.toml").write_text('[plugins.apt]\nlisten = "127.0.0.1:9"\n')
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60)
    marker = proc.stdout.rfind("@@MODULES@@")
    assert marker >= 0, proc.stderr
    modules = json.loads(proc.stdout[marker + len("@@MODULES@@"):])
    assert sorted(m for m in modules if m.split(".")[0] in HEAVY) == []


@pytest.mark.cluster
def test_proxy_detect_drives_apt_and_falls_back_to_direct(cluster, repo, server, tmp_path):
    (node,) = add_nodes(cluster, 1, repo)
    config = node.dir / "config.toml"
    detect = [sys.executable, "-m", "beiran", "apt", "proxy-detect"]
    out = subprocess.run([*detect, f"{server.url}/debian/dists/stable/InRelease"], env=cli_env(config),
                         capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == proxy_of(node)
    assert subprocess.run([*detect, "https://example.org/"], env=cli_env(config), capture_output=True,
                          text=True, timeout=30).stdout.strip() == "DIRECT"

    # apt runs the detector itself (with the URI as its only argument) and goes through the proxy;
    # the wheel's console script when it is installed (nox), else the same code through -m beiran
    installed = shutil.which("beiran-apt-proxy-detect", path=str(Path(sys.executable).parent))
    command = installed or f"{sys.executable} -m beiran apt proxy-detect"
    script = tmp_path / "detect.sh"
    script.write_text(f"#!/bin/sh\nBEIRAN_CONFIG={config} exec {command} \"$@\"\n")
    script.chmod(0o755)
    client = AptClient(tmp_path / "apt", [repo.source_line(server.url)],
                       options={"Acquire::http::Proxy-Auto-Detect": str(script)})
    (client.config_file).write_text(client.config_file.read_text().replace('Acquire::http::Proxy "DIRECT";\n', ""))
    client.update()
    client.download("hello")
    assert client.debs() == repo.expected("hello", "libhello")
    assert [p["package"] for p in node.api("GET", "/apt/packages")["packages"]] == ["hello", "libhello"]

    snippet = beiran(node, "apt", "configure", env={"BEIRAN_CONFIG": str(config)}).stdout
    assert "Acquire::http::Proxy-Auto-Detect" in snippet and f"{proxy_of(node)}/https/" in snippet
    if installed:
        assert f'Proxy-Auto-Detect "{installed}";' in snippet
    target = tmp_path / "apt.conf.d" / "30beiran-proxy"
    beiran(node, "apt", "configure", "--write", "--path", str(target), env={"BEIRAN_CONFIG": str(config)})
    assert target.read_text() == snippet

    node.stop()
    out = subprocess.run([*detect, f"{server.url}/x"], env=cli_env(config), capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0 and out.stdout.strip() == "DIRECT"
    client.clean()
    client.update()  # the daemon is gone: apt goes direct and still works
    client.download("hello")
    assert client.debs() == repo.expected("hello", "libhello")


@pytest.mark.cluster
def test_configure_and_proxy_detect_print_the_running_daemons_proxy(cluster, repo, server, tmp_path):
    (node,) = add_nodes(cluster, 1, repo)
    stale = tmp_path / "stale.toml"  # a config file that is not what the daemon runs with
    stale.write_text('[plugins.apt]\nlisten = "127.0.0.1:9"\n')
    env = {"BEIRAN_CONFIG": str(stale)}
    assert proxy_of(node) != "http://127.0.0.1:3142"
    detect = beiran(node, "apt", "proxy-detect", f"{server.url}/debian/dists/stable/InRelease", env=env)
    assert detect.stdout.strip() == proxy_of(node), detect
    configure = beiran(node, "apt", "configure", env=env)
    assert f"answers {proxy_of(node)} while" in configure.stdout and "127.0.0.1:9" not in configure.stdout
    assert configure.stderr == ""

    node.stop()  # no daemon: the config file's address, and the CLI says where it came from
    configure = beiran(node, "apt", "configure", env=env)
    assert "http://127.0.0.1:9" in configure.stdout
    assert "no running daemon" in configure.stderr and "config file" in configure.stderr


@pytest.mark.cluster
def test_a_taken_port_says_how_to_move_the_proxy(cluster, tmp_path):
    import socket

    from beiran_testkit.aptclient import apt_config

    ip = cluster.ip(len(cluster.nodes))
    holder = socket.socket()
    holder.bind((ip, 3142))  # what apt-cacher-ng would hold
    holder.listen()
    try:
        node = cluster.add(apt_config(ip), start=True)
        (apt,) = [p for p in node.api("GET", "/status")["plugins"] if p["name"] == "apt"]
        assert apt["status"] == "error", apt
        assert "[plugins.apt] listen = " in apt["error"] and f"{ip}:3142" in apt["error"], apt
        assert "apt-cacher-ng" in apt["error"]
        assert "[plugins.apt] listen = " in beiran(node, "plugins").stdout + node.log()
    finally:
        holder.close()


def test_configure_with_a_broken_config_file_says_so(tmp_path: Path) -> None:
    """With no daemon, `apt configure` reads the config file for the proxy's address: a broken one
    used to be skipped silently (the default address, "from the config file"); proxy-detect, which
    apt runs, still answers DIRECT."""
    (tmp_path / "config.toml").write_text("lisen = 1\n")
    env = cli_env(tmp_path / "config.toml")
    env["BEIRAN_SOCKET"] = str(tmp_path / "none.sock")
    out = subprocess.run([sys.executable, "-m", "beiran", "apt", "configure"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr == (f"Error: config file {tmp_path / 'config.toml'}: unknown setting lisen (it names the apt "
                          "proxy's address when no daemon runs)\n")
    out = subprocess.run([sys.executable, "-m", "beiran", "apt", "proxy-detect"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and out.stdout == "DIRECT\n"


def test_import_json_is_json_alone(tmp_path: Path) -> None:
    """`apt import DIR --json` printed its progress label ("importing") on stderr too."""
    env = cli_env()
    env["BEIRAN_SOCKET"] = str(tmp_path / "none.sock")
    out = subprocess.run([sys.executable, "-m", "beiran", "apt", "import", str(tmp_path), "--json"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"imported": 0, "files": []} and out.stderr == ""


def test_configure_write_never_creates_directories(tmp_path: Path) -> None:
    """`--write --path` into a directory that does not exist made the whole tree (a typo'd path
    left /nonexistent/... behind, run as root): it is one error line and nothing is created."""
    env = cli_env()
    env["BEIRAN_SOCKET"] = str(tmp_path / "none.sock")
    target = tmp_path / "no" / "such" / "99beiran"
    out = subprocess.run([sys.executable, "-m", "beiran", "apt", "configure", "--write", "--path", str(target)],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out
    assert out.stderr.endswith(f"{tmp_path / 'no' / 'such'} is not a directory (is apt installed here? "
                               "--path names the file to write)\n"), out.stderr
    assert len(out.stderr.splitlines()) <= 2 and "Traceback" not in out.stderr
    assert not (tmp_path / "no").exists()
    out = subprocess.run([sys.executable, "-m", "beiran", "apt", "configure", "--write", "--path",
                          str(tmp_path / "99beiran")], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "Proxy-Auto-Detect" in (tmp_path / "99beiran").read_text()
