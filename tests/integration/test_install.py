"""scripts/install as the README runs it, into temporary places, then the installed unit's own
ExecStart and ExecReload run as systemd would run them (no systemd here: $NOTIFY_SOCKET is a datagram
socket the test binds, $MAINPID the process the test started).

pip in the new venv is offline (PIP_NO_INDEX): the wheels' dependencies come from a wheelhouse
repacked from this test venv's own installed distributions, so the test talks to no index."""

from __future__ import annotations

import importlib.metadata
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from beiran_testkit.daemon import next_subnet, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def _wheelhouse(out: Path) -> Path:
    """Every distribution installed in this venv (not the system's), as a wheel pip can install."""
    out.mkdir()
    site = Path(sysconfig.get_paths()["purelib"])
    for dist in importlib.metadata.distributions(path=[str(site)]):
        name = re.sub(r"[-_.]+", "_", dist.metadata["Name"]).lower()
        if name.startswith("beiran"):
            continue
        files = [f for f in dist.files or () if not str(f).startswith("..") and f.suffix != ".pyc"
                 and f.name not in ("RECORD", "INSTALLER", "REQUESTED", "direct_url.json")]
        info = next((f.parts[0] for f in files if f.parts[0].endswith(".dist-info")), None)
        if info is None:
            continue
        with zipfile.ZipFile(out / f"{name}-{dist.version}-py3-none-any.whl", "w") as whl:
            for f in files:
                path = Path(dist.locate_file(f))
                if path.is_file():
                    whl.write(path, str(f))
            whl.writestr(f"{info}/RECORD", "".join(f"{f},,\n" for f in files) + f"{info}/RECORD,,\n")
    return out


def _notify_socket(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(30)
    return sock


def _until(sock: socket.socket, line: bytes) -> list[bytes]:
    """Datagrams up to and including the one holding `line`."""
    got = [sock.recv(4096)]
    while line not in got[-1].splitlines():
        got.append(sock.recv(4096))
    return got


def test_install_script_then_the_units_own_commands(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("scripts/install runs as root")
    dist = Path(os.environ["BEIRAN_DIST"])
    house = _wheelhouse(tmp_path / "wheelhouse")
    venv, bin_dir, etc, units = tmp_path / "opt/beiran", tmp_path / "bin", tmp_path / "etc/beiran", tmp_path / "units"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BEIRAN_", "PIP_", "VIRTUAL_ENV"))}
    env.update(PIP_NO_INDEX="1", PIP_FIND_LINKS=str(house))
    cmd = [str(ROOT / "scripts/install"), "--venv", str(venv), "--bin-dir", str(bin_dir), "--etc-dir", str(etc),
           "--unit-dir", str(units), *map(str, sorted(dist.glob("*.whl")))]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, close_fds=True)
    assert out.returncode == 0, out.stdout + out.stderr

    assert "include-system-site-packages = true" in (venv / "pyvenv.cfg").read_text()
    check = subprocess.run([str(venv / "bin/python"), "-c", "import apt_pkg, beiran, beiran_plugins.apt"],
                           capture_output=True, text=True, env=env)
    assert check.returncode == 0, check.stderr  # Debian's python3-apt seen from the venv
    assert os.readlink(bin_dir / "beiran") == str(venv / "bin/beiran")
    assert subprocess.run([str(bin_dir / "beiran"), "--help"], capture_output=True, env=env).returncode == 0
    config = etc / "config.toml"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert config.read_text() == (ROOT / "contrib/config.example.toml").read_text()

    unit = (units / "beiran.service").read_text()
    if shutil.which("systemd-analyze"):  # systemd's own parser: every directive known, every value valid
        verify = subprocess.run(["systemd-analyze", "verify", str(units / "beiran.service")],
                                capture_output=True, text=True, timeout=120)
        assert verify.returncode == 0 and not verify.stderr.strip() and not verify.stdout.strip(), (
            verify.stdout + verify.stderr)
    assert re.search(r"^Type=notify$", unit, re.M)
    exec_start = shlex.split(re.search(r"^ExecStart=(.+)$", unit, re.M).group(1))
    exec_reload = re.search(r"^ExecReload=(.+)$", unit, re.M).group(1)
    assert exec_start[:2] == [str(venv / "bin/beiran"), "daemon"] and str(config) in exec_start

    # the unit's ExecStart, with only where it keeps its files and listens changed (as env)
    sub = next_subnet()
    ip = f"127.{sub // 1000}.{sub % 1000}.2"
    run = tmp_path / "run"
    denv = {**env, "NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "BEIRAN_DATA_DIR": str(tmp_path / "data"),
            "BEIRAN_RUN_DIR": str(run), "BEIRAN_LISTEN": f"{ip}:8888",
            **{f"BEIRAN_PLUGINS__{p}__ENABLED": "false" for p in ("APT", "ZEROCONF", "K8S")}}
    notify = _notify_socket(tmp_path / "notify.sock")
    log = open(tmp_path / "daemon.log", "wb")
    proc = subprocess.Popen(exec_start, env=denv, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, close_fds=True)
    try:
        assert b"READY=1" in notify.recv(4096).splitlines()
        config.write_text(config.read_text().replace('log_level = "info"', 'log_level = "debug"'))
        reload_cmd = shlex.split(exec_reload.replace("$MAINPID", str(proc.pid)))
        assert subprocess.run(reload_cmd).returncode == 0
        logtext = lambda: (tmp_path / "daemon.log").read_text(errors="replace")  # noqa: E731
        wait_until(lambda: "reloaded" in logtext(), 20, what="the reload")
        assert re.search(r"reloaded .*: log_level", logtext()), logtext()[-2000:]
        msgs = _until(notify, b"READY=1")  # systemd's reload protocol: RELOADING=1, then READY=1
        assert b"RELOADING=1" in msgs[0].splitlines()
        proc.send_signal(signal.SIGTERM)
        assert _until(notify, b"STOPPING=1")
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()

    assert "warning" not in out.stderr, out.stderr
    # again, as an upgrade: the edited config is kept, and made private again if loosened; a setting
    # this version does not know is named now, not at the service's next start
    config.chmod(0o644)
    config.write_text(config.read_text().replace('log_level = "debug"', 'log_level = "debug"\nold_setting = 1'))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, close_fds=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"warning: {config} does not load with this version: config file {config}: unknown setting " \
           "old_setting" in out.stderr, out.stderr
    assert 'log_level = "debug"' in config.read_text()
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    print(f"scripts/install: {sys.version.split()[0]}, {len(list(house.iterdir()))} dependency wheels offline")
