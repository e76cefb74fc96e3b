"""A new user's first hour with the CLI (issue 18): finding the daemon, `beiran config` as TOML that a
daemon starts from, stray BEIRAN_* variables, UUID checks, readable tables. Real daemons, real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from beiran_testkit.daemon import Daemon

pytestmark = pytest.mark.cluster


def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess:
    """`beiran ARGS` with none of the caller's BEIRAN_* variables (plus `env`)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("BEIRAN_")}
    return subprocess.run([sys.executable, "-m", "beiran", *args], capture_output=True, text=True,
                          env={**base, **(env or {})}, cwd=cwd, timeout=timeout)


def one_line_error(out: subprocess.CompletedProcess) -> str:
    assert out.returncode != 0, out.stdout
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    return lines[0]


# -- item 1: the CLI finds the quick-start daemon, and says what it tried ----------------------------
def test_cli_finds_a_quick_start_daemon_from_its_checkout(cluster, tmp_path):
    """scripts/daemon runs `beiran daemon --data-dir <checkout>/.beiran-data`: a new shell in the
    checkout (or below it) finds that daemon with no BEIRAN_SOCKET."""
    checkout = tmp_path / "co"  # short: unix socket paths are limited to 108 bytes
    node = cluster.add(config={"data_dir": str(checkout / ".beiran-data")}, peers=None, start=False)
    node.data_dir = checkout / ".beiran-data"
    node.start()
    assert node.socket == str(checkout / ".beiran-data" / "beirand.sock")
    (checkout / "sub" / "dir").mkdir(parents=True)
    nothing = tmp_path / "nothing.toml"  # the configured socket is elsewhere, and not there
    nothing.write_text(f'run_dir = "{tmp_path / "run"}"\n')
    for cwd in (checkout, checkout / "sub" / "dir"):
        out = run("node", "info", "--json", env={"BEIRAN_CONFIG": str(nothing)}, cwd=cwd)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["uuid"] == node.uuid

    # elsewhere: one line saying each socket tried and why it did not answer, and how to name one
    line = one_line_error(run("node", "info", env={"BEIRAN_CONFIG": str(nothing)}, cwd=tmp_path))
    assert f"{tmp_path / 'run' / 'beirand.sock'} (socket of {nothing}: no such file)" in line
    assert "--socket" in line and "BEIRAN_SOCKET" in line

    # a socket that is no daemon's: a stopped daemon's leftover, a regular file, a directory
    node.kill()
    line = one_line_error(run("--socket", node.socket, "node", "info"))
    assert "nothing listens there" in line and node.socket in line
    line = one_line_error(run("--socket", "/etc/hostname", "node", "info"))
    assert line == ("Error: --socket /etc/hostname is a regular file, not a socket: point --socket or "
                    "BEIRAN_SOCKET at the daemon's beirand.sock (in its run_dir or data_dir)")
    line = one_line_error(run("node", "info", env={"BEIRAN_SOCKET": str(tmp_path)}))
    assert line.startswith(f"Error: BEIRAN_SOCKET {tmp_path} is a directory, not a socket")


@pytest.mark.each_plugin  # an installed plugin changes what this shows
# -- item 3: `beiran config` is TOML a daemon starts from, giving the same config --------------------
def test_config_output_is_toml_that_round_trips_through_a_daemon(cluster, tmp_path):
    node = cluster.add(config={
        "store": {"max_size": "10G", "reserve_free": "256M", "fsync": False},
        "fetch": {"piece_size": "4M", "large_blob_threshold": 3_000_001},
        "origins": {"files": "http://127.0.0.1:1/base"},
        "cluster_token": "do-not-print-me",
        "plugins": {"docker": {"registries": {"127.0.0.1:15055": {"url": "http://127.0.0.1:15055"}}}},
    }, peers=None)
    text = node.cli("config")
    data = tomllib.loads(text)  # valid TOML (registry names with ':' quoted)
    assert data["store"] == {"max_size": "10G", "reserve_free": "256M", "fsync": False}
    assert data["fetch"]["piece_size"] == "4M" and data["fetch"]["large_blob_threshold"] == 3_000_001
    assert data["plugins"]["docker"]["registries"]["127.0.0.1:15055"]["url"] == "http://127.0.0.1:15055"
    assert "do-not-print-me" not in text and "***" not in text and "cluster_token" not in data
    assert "# not shown (secrets): cluster_token" in text
    before = node.cli("config", "--json")

    # `beiran config > f.toml && beiran daemon --config f.toml`: the same config
    saved = tmp_path / "f.toml"
    saved.write_text('cluster_token = "do-not-print-me"\n' + text)  # the one value not shown
    node.stop()
    again = Daemon(cluster.base, "again", node.ip)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BEIRAN_")}
    log = open(again.log_path, "ab")
    again.proc = subprocess.Popen([sys.executable, "-m", "beiran", "daemon", "--config", str(saved)],
                                  stdout=log, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)
    log.close()
    cluster.nodes.append(again)  # stopped with the cluster
    again.data_dir = node.data_dir
    again.wait_ready()
    after = again.cli("config", "--json")
    assert after.pop("source_file") == str(saved) and before.pop("source_file") != str(saved)
    assert after == before


# -- item 4: a stray BEIRAN_* variable -------------------------------------------------------------
def test_stray_beiran_variables_named_by_the_daemon_ignored_by_cli_commands(cluster, tmp_path):
    node = cluster.add(peers=None)
    # CLI commands that only need the socket do not care
    out = run("node", "info", "--json", env={"BEIRAN_FOO": "1", "BEIRAN_SOCKET": node.socket})
    assert out.returncode == 0 and json.loads(out.stdout)["uuid"] == node.uuid, out.stderr
    # the daemon refuses it, naming the variable and where it came from
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "d"}"\nlisten = "{node.ip}:8899"\n')
    line = one_line_error(run("daemon", "--config", str(cfg), env={"BEIRAN_FOO": "1"}))
    assert "environment variable BEIRAN_FOO" in line and "not a Beiran setting" in line
    line = one_line_error(run("daemon", "--config", str(cfg), env={"BEIRAN_STORE__MAX_SIZ": "1G"}))
    assert "BEIRAN_STORE__MAX_SIZ" in line
    line = one_line_error(run("config", "--local", env={"BEIRAN_CONFIG": str(cfg), "BEIRAN_LISTN": "x"}))
    assert "environment variable BEIRAN_LISTN" in line
    # an unknown key in the file is the file's
    bad = tmp_path / "bad.toml"
    bad.write_text("lisen = 1\n")
    line = one_line_error(run("config", "--local", env={"BEIRAN_CONFIG": str(bad)}))
    assert f"config file {bad}: unknown setting lisen" in line
    # variables the tools themselves use are not settings
    out = run("config", "--local", "--json", env={"BEIRAN_CONFIG": str(cfg), "BEIRAN_SOCKET": "/x/s.sock",
                                                  "BEIRAN_TEST_ANYTHING": "1", "BEIRAN_DIST": "/x"})
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["socket"] == "/x/s.sock"


# -- item 10: output nits ---------------------------------------------------------------------------
def test_node_uuid_checked_and_tables_readable_json_raw(cluster):
    node = cluster.add(peers=None)
    line = one_line_error(run("--socket", node.socket, "node", "info", "not-a-uuid"))
    assert line == "Error: not a node UUID: 'not-a-uuid' (see `beiran node list`)"
    status, _, body = node.request("GET", "/nodes/not-a-uuid")
    assert status == 400 and "not a node UUID" in json.loads(body)["message"]
    # a UUID written without dashes is the same node
    assert node.cli("node", "info", node.uuid.replace("-", ""), "--json")["uuid"] == node.uuid

    digest = node.add_blob(b"x" * 3000)
    assert digest
    table = node.cli("stats")
    served = next(line for line in table.splitlines() if line.startswith("beiran_store_bytes "))
    assert served.split()[-2:] == ["2.9", "KiB"]
    assert node.cli("stats", "--json")["metrics"]["beiran_store_bytes"] == 3000
    listing = node.cli("node", "list")
    assert "ago" in listing.splitlines()[1]
    assert "True" not in listing and "False" not in listing


@pytest.mark.each_plugin  # an installed plugin changes what this shows
def test_plugin_tables_say_yes_and_no(cluster, tmp_path):
    """ENABLED is yes/no, not Python's True (a plugin in its own dir on PYTHONPATH)."""
    pkg = tmp_path / "extra" / "beiran_plugins" / "hello"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text('__version__ = "1.0"\n')
    (pkg / "plugin.py").write_text("from beiran.plugin import BaseInterfacePlugin\n\n"
                                   "class Hello(BaseInterfacePlugin):\n    pass\n\nPLUGIN = Hello\n")
    extra = str(tmp_path / "extra")
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), extra]))}
    node = cluster.add(peers=None, env=env)
    out = run("--socket", node.socket, "plugins", env=env)
    assert out.returncode == 0, out.stderr
    row = next(line.split() for line in out.stdout.splitlines() if line.startswith("hello "))
    assert row[-2:] == ["yes", "ready"], out.stdout
    assert "True" not in out.stdout


# -- item 8: progress on long work ------------------------------------------------------------------
def on_terminal(*args: str) -> tuple[int, str, str]:
    """`beiran ARGS` with stderr on a pseudo-terminal (where progress is drawn): (rc, stdout, terminal)."""
    master, slave = os.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BEIRAN_")}
    env.update(TERM="xterm", COLUMNS="120")
    proc = subprocess.Popen([sys.executable, "-m", "beiran", *args], stdout=subprocess.PIPE, stderr=slave,
                            stdin=subprocess.DEVNULL, env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    out = proc.stdout.read().decode()
    proc.stdout.close()
    return proc.wait(60), out, b"".join(chunks).decode(errors="replace")


def test_blobs_add_and_fetch_output_draw_progress_on_a_terminal(cluster, tmp_path):
    node = cluster.add(peers=None)
    data = os.urandom(3 << 20)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    rc, out, term = on_terminal("--socket", node.socket, "blobs", "add", str(src))
    assert rc == 0, term
    digest = out.strip()
    assert digest.startswith("sha256:") and node.blob(digest) == data
    assert "━" in term and "big.bin stored" in term and "3.0/3.0 MiB" in term, term

    target = tmp_path / "copy.bin"
    rc, out, term = on_terminal("--socket", node.socket, "blobs", "fetch", digest, "-o", str(target))
    assert rc == 0, term
    assert target.read_bytes() == data
    assert f"{digest[:19]} -> {target} written" in term and "━" in term, term
    # off a terminal: no bars, the digest (and the summary) only
    plain = run("--socket", node.socket, "blobs", "add", str(src))
    assert plain.returncode == 0 and plain.stdout.strip() == digest and plain.stderr == ""
