"""The README's quick start, as a new user runs it (issue 18): a fresh clone, `scripts/daemon` as
written, then in a new shell the commands the README shows after it, each checked for exit status 0
and for what the README says it prints.

Not run: `scripts/test` (the whole suite, this test among it) and the two alternative invocations
(`--listen 0.0.0.0:8888 --peer http://10.0.0.2:8888`, `--config /etc/...`): tests talk only to
loopback. The user's environment only moves the daemon off the machine-wide defaults that other
tests and daemons here may hold (the listen address, the apt proxy's port, the zeroconf cluster).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import tomllib
import uuid
from pathlib import Path

import pytest

from beiran_testkit.daemon import UnixHTTP, next_subnet

pytestmark = [pytest.mark.slow, pytest.mark.cluster, pytest.mark.timeout(900)]  # it builds the wheels
PLUGINS = ["apt", "dns", "docker", "k8s", "npm", "zeroconf"]


def repo_root() -> Path:
    """The checkout under test: the nox sessions say where (the tests run from installed wheels)."""
    env = os.environ.get("BEIRAN_TEST_REPO")
    return Path(env) if env else Path(__file__).resolve().parents[2]


def quick_start_blocks(readme: str) -> list[str]:
    section = readme.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, re.S)


def commands(block: str) -> list[tuple[str, str]]:
    """(command, the comment after it) for each line of a block."""
    out = []
    for line in block.strip().splitlines():
        cmd, _, comment = line.partition("#")
        out.append((cmd.strip(), comment.strip()))
    return out


def user_env(ip: str) -> dict[str, str]:
    """A login shell's environment: nothing of nox's venv or of the test session's BEIRAN_*."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("BEIRAN_", "NOX_")) and k not in ("VIRTUAL_ENV", "PYTHONPATH", "CONDA_PREFIX")}
    venv = os.environ.get("VIRTUAL_ENV")
    env["PATH"] = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                                  if p and not (venv and p.startswith(venv)))
    env.update({"BEIRAN_LISTEN": f"{ip}:8888", "BEIRAN_PLUGINS__APT__LISTEN": f"{ip}:3142",
                "BEIRAN_PLUGINS__ZEROCONF__CLUSTER": f"walkthrough-{uuid.uuid4().hex[:8]}"})
    return env


def status(sock: Path) -> dict | None:
    try:
        conn = UnixHTTP(str(sock), 5)
        conn.request("GET", "/status")
        data = json.loads(conn.getresponse().read())
        conn.close()
        return data
    except (OSError, ValueError):
        return None


@pytest.fixture
def clone() -> Path:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    base = Path(tempfile.mkdtemp(prefix="bw-", dir="/tmp"))  # short: unix socket paths <= 108 bytes
    target = base / "beiran"
    subprocess.run(["git", "clone", "-q", str(repo_root()), str(target)], check=True, timeout=120)
    yield target
    shutil.rmtree(base, ignore_errors=True)


def test_readme_quick_start_as_written_in_a_fresh_clone(clone: Path) -> None:
    blocks = quick_start_blocks((clone / "README.md").read_text())
    assert len(blocks) == 3, blocks
    start, alternatives, after = (commands(b) for b in blocks)
    assert start[0][0] == "scripts/daemon" and start[1][0] == "scripts/test"
    assert all(cmd.startswith("scripts/daemon --") for cmd, _ in alternatives)

    subnet = next_subnet()
    ip = f"127.{subnet // 1000}.{subnet % 1000}.2"
    env = user_env(ip)
    log = open(clone.parent / "daemon.log", "wb")
    daemon = subprocess.Popen(["bash", "-c", start[0][0]], cwd=clone, env=env, stdout=log,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    sock = clone / ".beiran-data" / "beirand.sock"
    try:
        deadline = time.monotonic() + 900  # builds the wheels and the venv first
        while True:
            assert daemon.poll() is None, (clone.parent / "daemon.log").read_text()[-4000:]
            st = status(sock) if sock.exists() else None
            if st and all(p["status"] != "init" for p in st["plugins"]):
                break
            assert time.monotonic() < deadline, (clone.parent / "daemon.log").read_text()[-4000:]
            time.sleep(0.5)
        assert f"admin socket: {sock}" in (clone.parent / "daemon.log").read_text()

        # the block after it, as written, in one new shell (no BEIRAN_SOCKET): each command's output
        script = "".join(f"echo @@begin\n{cmd}\necho \"@@rc $?\"\n" for cmd, _ in after)
        out = subprocess.run(["bash", "-c", script], cwd=clone, env=env, capture_output=True, text=True,
                             timeout=300)
        parts = re.findall(r"@@begin\n(.*?)@@rc (\d+)\n", out.stdout, re.S)
        assert len(parts) == len(after), out.stdout + out.stderr
        outputs = {}
        for (cmd, says), (text, rc) in zip(after, parts, strict=True):
            assert rc == "0", (cmd, out.stderr)
            outputs[cmd.split()[1]] = (text, says)

        info, says = outputs["node"]
        fields = dict(line.split(None, 1) for line in info.splitlines() if " " in line)
        assert "uuid" in says and "url http://127.0.0.1:8888" in says and "plugins" in says
        assert uuid.UUID(fields["uuid"]) and fields["url"] == f"http://{ip}:8888"  # the address we gave
        assert sorted(fields["plugins"].split(", ")) == PLUGINS

        table, says = outputs["plugins"]
        assert "ENABLED yes" in says and "STATUS ready" in says
        rows = {line.split()[0]: line for line in table.splitlines()[1:]}
        assert sorted(rows) == PLUGINS, table
        for name, row in rows.items():
            assert " yes " in row, row
            expected = "(ready|degraded: containerd not reachable at .*)" if name == "k8s" else "ready"
            assert re.search(rf"  {expected}$", row), row

        text, says = outputs["config"]
        assert "TOML" in says
        config = tomllib.loads(text)
        assert config["listen"] == f"{ip}:8888" and config["data_dir"] == str(clone / ".beiran-data")
        assert config["store"]["reserve_free"] == "256M"
    finally:
        if daemon.poll() is None:
            os.killpg(daemon.pid, signal.SIGTERM)  # our own process group: the script and its daemon
            try:
                daemon.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(daemon.pid, signal.SIGKILL)
                daemon.wait(10)
