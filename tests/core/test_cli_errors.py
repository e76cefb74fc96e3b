"""Every CLI error is one line on stderr saying what was wrong and what to do, never a traceback or
click's three-line usage block; with --json, stdout is JSON on failure too. Mostly in-process
(click's runner); one real daemon for errors it answers, and `beiran daemon` start-up failures."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from click.testing import CliRunner

from beiran.cli.main import cli


def invoke(*args: str, env: dict[str, str] | None = None):
    clean = {k: None for k in os.environ if k.startswith("BEIRAN_")}
    return CliRunner().invoke(cli, list(args), env={**clean, **(env or {})}, prog_name="beiran")


def one_line(result) -> str:
    assert result.exit_code not in (0, None), result.output
    assert "Traceback" not in result.output and "Usage:" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    return lines[0]


@pytest.mark.parametrize(("args", "expected"), [
    (["node", "info", "--bogus"], "Error: No such option '--bogus' (see `beiran node info --help`)"),
    (["nosuch"], "Error: No such command 'nosuch' (see `beiran --help`)"),
    (["blobs", "fetch"], "Error: Missing argument 'DIGEST' (see `beiran blobs fetch --help`)"),
    (["ui", "--serve", "99999"], "Error: Invalid value for '--serve': 99999 is not in the range 0<=x<=65535 "
                                 "(see `beiran ui --help`)"),
])
def test_a_usage_error_is_one_line_naming_the_help_to_read(args, expected):
    result = invoke(*args)
    assert result.exit_code == 2
    assert one_line(result) == expected
    assert result.stdout == ""


def test_a_group_without_a_command_shows_its_help_and_socket_after_the_command_is_explained(tmp_path):
    for args in ([], ["node"]):
        result = invoke(*args)
        assert result.exit_code in (0, 2) and result.output.startswith("Usage: beiran"), result.output
        assert "Error" not in result.output
    line = one_line(invoke("node", "list", "--socket", str(tmp_path / "s")))
    assert line == "Error: --socket goes before the command: `beiran --socket PATH node list ...`"


def test_config_local_checks_a_named_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[fetch]\npeer_timeout = "slow"\n')
    assert one_line(invoke("config", "--local", "--config", str(bad))) == (
        f"Error: config file {bad}: fetch.peer_timeout must be a number, not 'slow'")
    assert one_line(invoke("config", "--config", str(bad))) == (
        "Error: --config FILE reads a file, not the running daemon: add --local")
    good = tmp_path / "good.toml"
    good.write_text('listen = "127.0.0.1:9999"\n')
    result = invoke("config", "--local", "--config", str(good), "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["listen"] == "127.0.0.1:9999"


def test_json_commands_fail_with_json_on_stdout(tmp_path):
    sock = str(tmp_path / "none.sock")
    result = invoke("--socket", sock, "node", "list", "--json")
    line = one_line(result)
    assert "the beiran daemon is not running" in line and "--socket" in line
    body = json.loads(result.stdout)
    assert body["error"] == "daemon_not_running" and body["message"] == line.removeprefix("Error: ")
    # a usage error of a --json command: JSON too
    result = invoke("--socket", sock, "blobs", "list", "--json", "--bogus")
    assert result.exit_code == 2 and json.loads(result.stdout)["error"] == "usage"
    # without --json nothing goes to stdout
    result = invoke("--socket", sock, "node", "list")
    assert one_line(result) and result.stdout == ""


def test_an_unexpected_error_is_one_line_with_a_way_to_the_traceback(monkeypatch, tmp_path):
    from beiran.cli import client as client_mod

    def boom(self, path):
        raise RuntimeError("something broke")

    monkeypatch.setattr(client_mod.DaemonClient, "get", boom)
    line = one_line(invoke("--socket", str(tmp_path / "s"), "stats"))
    assert line == ("Error: unexpected RuntimeError: something broke (a bug in beiran: BEIRAN_TRACEBACK=1 "
                    "shows the traceback for a report)")
    result = invoke("--socket", str(tmp_path / "s"), "stats", env={"BEIRAN_TRACEBACK": "1"})
    assert isinstance(result.exception, RuntimeError)

    def denied(self, path):
        raise PermissionError(13, "Permission denied", "/some/file")

    monkeypatch.setattr(client_mod.DaemonClient, "get", denied)
    assert one_line(invoke("--socket", str(tmp_path / "s"), "stats")) == "Error: /some/file: Permission denied"


def daemon_error(tmp_path, *args: str) -> str:
    """`beiran daemon ARGS` that must fail at start-up: its one error line."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BEIRAN_")}
    out = subprocess.run([sys.executable, "-m", "beiran", "daemon", *args], capture_output=True, text=True,
                         env=env, timeout=60, stdin=subprocess.DEVNULL)
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if "ERROR" in line or line.startswith("Error:")]
    assert len(errors) == 1, out.stderr
    return errors[0]


def test_daemon_start_up_failures_say_what_to_do(tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        line = daemon_error(tmp_path, "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "d1"))
    finally:
        busy.close()
    assert line.endswith(f"cannot listen on 127.0.0.1:{port}: Address already in use; another program (or another "
                         "beiran daemon) listens there: stop it or choose another --listen, listen or BEIRAN_LISTEN")

    blocker = tmp_path / "file"
    blocker.write_text("")
    line = daemon_error(tmp_path, "--listen", "127.0.0.1:1", "--data-dir", str(blocker / "data"))
    assert line.endswith(f"cannot use data dir {blocker / 'data'}: Not a directory; give a directory this user "
                         "can write with --data-dir, data_dir or BEIRAN_DATA_DIR")

    line = daemon_error(tmp_path, "--listen", "127.0.0.1:1", "--data-dir", str(tmp_path / "d2"),
                        "--run-dir", str(blocker / "run"))
    assert f"cannot make the admin socket {blocker / 'run' / 'beirand.sock'}: Not a directory" in line


@pytest.mark.cluster
def test_probing_a_node_with_another_cluster_token_says_so(cluster):
    """`beiran node probe` of a node that refuses this node's token used to print "connecting" and
    exit 0, and the node never showed up anywhere; the log said nothing above debug."""
    a = cluster.add(config={"cluster_token": "token-a"}, peers=None)
    b = cluster.add(config={"cluster_token": "token-b"}, peers=None)
    open_node = cluster.add(peers=None)  # no token: it cannot prove a's
    out = subprocess.run([sys.executable, "-m", "beiran", "--socket", a.socket, "node", "probe", b.url.split("//")[1]],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip() == (f"Error: {b.url} (node {b.uuid[:8]}) refused our cluster token (HTTP 401): set the "
                                  "same cluster_token on every node; it is dialed again in the background (HTTP 502)")
    assert f"peer {b.url} refuses this node: refused our cluster token" in a.log()
    out = subprocess.run([sys.executable, "-m", "beiran", "--socket", a.socket, "node", "probe", open_node.url,
                          "--json"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    body = json.loads(out.stdout)
    assert body["status"] == 502 and "closed the connection: peer could not prove the cluster token" in body["message"]
    # a node with the same token still probes fine
    c = cluster.add(config={"cluster_token": "token-a"}, peers=None)
    assert a.cli("node", "probe", c.url, "--json")["status"] == "online"


def test_stats_and_store_tables_are_readable(monkeypatch, tmp_path):
    """`beiran stats` listed every histogram bucket (90 of 141 lines on a fresh node) with labels as
    `{code=200}{plugin=apt}`; `blobs stats` said `max_size None`."""
    from beiran.cli import client as client_mod

    answers = {
        "/stats": {"metrics": {
            'beiran_http_request_seconds_bucket{le=+Inf}{plugin=apt}': 13.0,
            'beiran_http_request_seconds_sum{plugin=apt}': 0.10040664672851562,
            'beiran_http_requests_total{code=200}{plugin=apt}': 9.0,
            'beiran_store_bytes': 3000.0}},
        "/blobs/stats": {"path": "/x", "blobs": 1, "bytes": 6, "pinned_blobs": 0, "pinned_bytes": 0,
                         "downloading": 0, "max_size": None, "disk_free": 1 << 30},
    }
    monkeypatch.setattr(client_mod.DaemonClient, "get", lambda self, path: answers[path])
    out = invoke("--socket", str(tmp_path / "s"), "stats")
    assert out.exit_code == 0, out.output
    rows = {line.split()[0]: " ".join(line.split()[1:]) for line in out.stdout.splitlines()[1:]}
    assert rows == {"beiran_http_request_seconds_sum{plugin=apt}": "0.1s",
                    "beiran_http_requests_total{code=200,plugin=apt}": "9",
                    "beiran_store_bytes": "2.9 KiB"}
    out = invoke("--socket", str(tmp_path / "s"), "blobs", "stats")
    assert "max_size      unlimited" in out.stdout and "pinned_bytes  0 B" in out.stdout


def test_blobs_fetch_checks_its_output_before_fetching(monkeypatch, tmp_path):
    """A bad -o used to be found only after the whole blob had been fetched."""
    from beiran.cli import client as client_mod

    fetched = []
    monkeypatch.setattr(client_mod.DaemonClient, "stream_lines", lambda self, *a: fetched.append(a) or iter(()))
    line = one_line(invoke("--socket", str(tmp_path / "s"), "blobs", "fetch", "sha256:" + "a" * 64,
                           "-o", str(tmp_path / "no" / "such" / "file")))
    assert line == f"Error: -o {tmp_path / 'no' / 'such' / 'file'}: {tmp_path / 'no' / 'such'} is not a directory " \
                   "this user can write"
    assert fetched == []


def test_node_info_takes_the_uuid_prefix_tables_show(monkeypatch, tmp_path):
    """Tables and preheat show 8 characters of a UUID; `node info` wanted the whole of it."""
    from beiran.cli import client as client_mod

    a, b = "3f2a9c1e-0000-4000-8000-000000000001", "3f2a9c1f-0000-4000-8000-000000000002"
    asked = []

    def get(self, path):
        asked.append(path)
        if path == "/nodes?all=true":
            return {"nodes": [{"uuid": a}, {"uuid": b}]}
        return {"uuid": path.rsplit("/", 1)[1]}

    monkeypatch.setattr(client_mod.DaemonClient, "get", get)
    sock = str(tmp_path / "s")
    out = invoke("--socket", sock, "node", "info", "3F2A9C1E", "--json")
    assert out.exit_code == 0 and json.loads(out.stdout)["uuid"] == a and asked[-1] == f"/nodes/{a}"
    assert one_line(invoke("--socket", sock, "node", "info", "3f2a9c1")) == (
        "Error: not a node UUID: '3f2a9c1' (see `beiran node list`)")
    assert one_line(invoke("--socket", sock, "node", "info", "3f2a9c1d")) == (
        "Error: no known node's UUID starts with '3f2a9c1d' (see `beiran node list --all`)")
    monkeypatch.setattr(client_mod.DaemonClient, "get", lambda self, path: {"nodes": [
        {"uuid": a}, {"uuid": a.replace("0001", "0009")}]})
    assert one_line(invoke("--socket", sock, "node", "info", "3f2a9c1e")) == (
        "Error: '3f2a9c1e' is the start of 2 nodes' UUIDs: give more of it")


@pytest.mark.cluster
def test_a_second_daemon_on_a_data_dir_or_socket_in_use_says_what_to_do(cluster, tmp_path):
    node = cluster.add(peers=None)
    line = daemon_error(tmp_path, "--listen", "127.0.0.1:1", "--data-dir", str(node.data_dir))
    assert line.endswith(f"another beiran daemon is already running on {node.data_dir}: stop it, or give this one "
                         "its own --data-dir (data_dir, BEIRAN_DATA_DIR)")
    line = daemon_error(tmp_path, "--listen", "127.0.0.1:1", "--data-dir", str(tmp_path / "other"),
                        "--run-dir", str(os.path.dirname(node.socket)))
    assert line.endswith(f"a daemon is already answering on {node.socket}: stop it, or give this one its own "
                         "--run-dir (run_dir, or socket)")


@pytest.mark.cluster
def test_a_failed_preheat_with_json_is_one_json_document_and_one_error_line(cluster):
    node = cluster.add(config={"origins": {"files": "http://127.0.0.1:1/base"}}, peers=None)
    out = subprocess.run([sys.executable, "-m", "beiran", "--socket", node.socket, "blobs", "preheat",
                          "sha256:" + "a" * 64, "--size", "10", "--source",
                          '{"plugin": "origin", "name": "files", "path": "/x"}', "--json", "--no-progress"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stdout + out.stderr
    result = json.loads(out.stdout)
    assert result["failed"] and result["nodes"][0]["state"] == "failed"
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: preheat failed on 1 node(s): {node.uuid[:8]} ("), lines


def test_node_list_reads_well_for_a_lone_node(monkeypatch, tmp_path):
    from beiran.cli import client as client_mod

    me = {"uuid": "3f2a9c1e-0000-4000-8000-000000000001", "url": "http://127.0.0.1:8888", "status": "ready",
          "found_by": ["self"], "last_seen": None}
    monkeypatch.setattr(client_mod.DaemonClient, "get", lambda self, path: {
        "nodes": [me], "cluster": {"mode": "full mesh", "members": 1, "full_mesh_max": 64}})
    out = invoke("--socket", str(tmp_path / "s"), "node", "list")
    assert out.exit_code == 0, out.output
    assert out.stdout.splitlines()[-1] == "cluster mode: full mesh (1 member; full mesh up to 64)"


@pytest.mark.parametrize(("nodes", "message"), [
    ("f5c1", "Error: --nodes: 'f5c1' is not a node UUID or its first 8+ characters (see `beiran node list`)"),
    (",", "Error: --nodes: name `all` or node UUIDs, comma-separated (see `beiran node list`)"),
])
def test_preheat_nodes_are_checked_before_anything_starts(monkeypatch, tmp_path, nodes, message):
    from beiran.cli import client as client_mod

    monkeypatch.setattr(client_mod.DaemonClient, "stream_lines", lambda self, *a: pytest.fail("preheat started"))
    assert one_line(invoke("--socket", str(tmp_path / "s"), "blobs", "preheat", "sha256:" + "a" * 64, "--source",
                           "{}", "--nodes", nodes)) == message
