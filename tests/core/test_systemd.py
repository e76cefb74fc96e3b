"""Running under systemd: readiness and stop notifications, SIGHUP reloads, SIGTERM, file modes.

systemd itself does not run here; what it relies on does: `$NOTIFY_SOCKET` is an AF_UNIX datagram
socket the test binds (as systemd does), and the signals are the ones `systemctl reload/stop` send.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import signal
import socket
import stat
import threading
import time
from pathlib import Path

import pytest

from beiran_testkit.daemon import Daemon, wait_until, write_toml

# real daemons, several seconds each: run once, in tests(core), not again in every plugin session
pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def _notify_socket(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(20)
    return sock


def _messages(sock: socket.socket) -> dict[str, str]:
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.splitlines() if "=" in line)


def test_ready_after_it_serves_stopping_at_sigterm_and_exit_in_time(cluster, tmp_path):
    notify = _notify_socket(tmp_path / "notify.sock")
    node = cluster.add(peers=None, start=False, env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock")})
    t0 = time.monotonic()
    node.start(wait=False)
    ready = _messages(notify)
    t_ready = time.monotonic() - t0
    assert ready.get("READY") == "1", ready
    assert ready.get("MAINPID") == str(node.proc.pid)
    # READY means serving: the very next request is answered, with every plugin past start-up
    assert node.tcp("GET", "/ping")[0] == 200
    assert all(p["status"] != "init" for p in node.api("GET", "/status")["plugins"])

    t1 = time.monotonic()
    node.proc.send_signal(signal.SIGTERM)
    stopping = _messages(notify)
    code = node.proc.wait(10)
    t_exit = time.monotonic() - t1
    assert stopping.get("STOPPING") == "1", stopping
    assert code == 0
    assert "shutting down" in node.log()
    print(f"READY=1 {t_ready:.2f}s after start; exit {t_exit:.2f}s after SIGTERM")


def _reload(node: Daemon, **changes: object) -> None:
    node.config.update(changes)
    write_toml(node.dir / "config.toml", node.config)
    node.proc.send_signal(signal.SIGHUP)


def _online_lines(node: Daemon, other: Daemon) -> int:
    return len(re.findall(rf"peer {other.uuid[:8]} \S+ online", node.log()))


def test_sighup_reloads_peers_and_log_level_keeping_connections(cluster):
    b = cluster.add(peers=None)
    c = cluster.add(peers=None)
    a = cluster.add({"log_level": "info"}, peers=[b.url])
    wait_until(lambda: b.uuid in a.online_peers(), 15, what="a connected to b")
    assert c.uuid not in a.online_peers()
    a.tcp("GET", "/ping")
    assert " DEBUG " not in a.log()
    b_online = _online_lines(a, b)

    _reload(a, peers=[b.url, c.url], log_level="debug", client_cidrs=["127.0.0.0/8", "10.9.0.0/16"])
    wait_until(lambda: c.uuid in a.online_peers(), 15, what="the added peer online")
    wait_until(lambda: "reloaded" in a.log(), 5, what="the reload logged")
    assert re.search(r"reloaded .*log_level.*peers", a.log()), a.log()[-2000:]
    a.tcp("GET", "/ping")
    wait_until(lambda: re.search(r" DEBUG .*GET /ping", a.log()), 5, what="debug logging on")
    conf = a.api("GET", "/config")
    assert conf["log_level"] == "debug" and conf["client_cidrs"] == ["127.0.0.0/8", "10.9.0.0/16"]
    # b's connection lived through the reload: never offline, never reconnected
    assert b.uuid in a.online_peers()
    assert _online_lines(a, b) == b_online
    assert not re.search(rf"peer {b.uuid[:8]} .*offline", a.log())

    _reload(a, peers=[c.url], log_level="info")
    wait_until(lambda: b.uuid not in a.online_peers(), 15, what="the removed peer dropped")
    assert c.uuid in a.online_peers()
    assert a.alive
    t0 = time.monotonic()
    assert a.stop() == 0
    print(f"exit {time.monotonic() - t0:.2f}s after SIGTERM with a peer connected")


def test_sighup_with_a_broken_config_keeps_the_running_one(cluster):
    b = cluster.add(peers=None)
    a = cluster.add({"log_level": "info"}, peers=[b.url])
    wait_until(lambda: b.uuid in a.online_peers(), 15, what="a connected to b")
    cfg = a.dir / "config.toml"
    good = cfg.read_text()
    cfg.write_text(good + "\nthis is = not [toml\n")
    a.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "the running configuration is kept" in a.log(), 10, what="the refusal logged")
    time.sleep(0.3)
    assert a.alive and a.tcp("GET", "/ping")[0] == 200
    assert b.uuid in a.online_peers()
    assert a.api("GET", "/config")["peers"] == [b.url]
    # a setting only a restart can apply: said so, the running value kept, the rest applied
    _reload(a, listen=f"{a.ip}:{a.port + 1}", log_level="warning")
    wait_until(lambda: "needs a restart" in a.log(), 10, what="restart-only change logged")
    assert re.search(r"listen changed .* needs a restart", a.log())
    conf = a.api("GET", "/config")
    assert conf["listen"] == f"{a.ip}:{a.port}" and conf["log_level"] == "warning"
    assert a.alive


def test_sighup_during_start_up_and_in_a_burst(cluster):
    """SIGHUP used to kill the daemon outright (the default action): now it never does."""
    a = cluster.add(peers=None, start=False)
    a.start(wait=False)
    wait_until(lambda: (a.data_dir / "beirand.lock").exists(), 20, what="start-up under way")
    a.proc.send_signal(signal.SIGHUP)  # before start-up finished: applied once the daemon is up
    a.wait_ready()
    for _ in range(5):
        a.proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    assert a.alive and a.tcp("GET", "/ping")[0] == 200
    assert a.stop() == 0


def _modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)) or ".": stat.S_IMODE(p.lstat().st_mode)
            for p in [root, *root.rglob("*")]}


def test_data_files_are_private_whatever_the_umask(cluster):
    old = os.umask(0)  # inherited by the daemon
    try:
        node = cluster.add(peers=None)
    finally:
        os.umask(old)
    node.add_blob(os.urandom(5000))
    node.api("GET", "/nodes")
    modes = _modes(node.data_dir)
    sock = "beirand.sock"
    assert modes.pop(sock) == 0o660  # the admin socket: its group may administer the node
    assert modes["."] == 0o750 and modes["blobs"] & 0o007 == 0
    assert "beiran.db" in modes and "node-uuid" in modes
    assert any(k.startswith("blobs/") and not stat.S_ISDIR((node.data_dir / k).stat().st_mode) for k in modes)
    loose = {k: oct(m) for k, m in modes.items() if m & 0o007 or m & 0o020}
    assert not loose, f"files other users can read or the group can write: {loose}"


def test_sigterm_mid_download_from_a_stalling_peer_exits_promptly(cluster):
    """A receive thread blocked on a peer that sends nothing for a while must not hold the exit
    (it would for up to the peer timeout, 30 s): systemd would SIGKILL after TimeoutStopSec."""
    data = os.urandom(3 << 20)
    slow = cluster.add({"testing": {"serve_rate": 40_000}}, peers=None)  # a chunk, then ~25 s of silence
    digest = slow.add_blob(data)
    node = cluster.add(peers=[slow.url])
    cluster.wait_connected()
    wait_until(lambda: any(b["digest"] == digest for b in node.api("GET", "/blobs?all=true")["blobs"]), 10,
               what="the slow node's blob announced")
    def fetch_it() -> None:
        with contextlib.suppress(OSError, ValueError, http.client.HTTPException):  # cut off by the stop
            node.request("POST", "/blobs?cmd=fetch", {"digest": digest, "size": len(data)}, timeout=60)

    fetch = threading.Thread(target=fetch_it, daemon=True)
    fetch.start()
    wait_until(lambda: node.api("GET", "/blobs/stats")["downloading"], 10, what="the download under way")
    time.sleep(1.0)
    t0 = time.monotonic()
    assert node.stop() == 0
    took = time.monotonic() - t0
    print(f"exit {took:.2f}s after SIGTERM mid-download from a stalling peer")
    assert took < 10
