"""The k8s plugin's status follows its runtime (issue 18 item 6): `beiran plugins` says `degraded:
containerd not reachable at ...` while containerd is down (not `ready`), `ready` once it answers, and
`beiran k8s images` then fails with one short line instead of gRPC's long text."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from beiran_testkit.cri import Containerd
from beiran_testkit.daemon import wait_until

pytestmark = [pytest.mark.cluster]


def cli(node, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BEIRAN_")}
    return subprocess.run([sys.executable, "-m", "beiran", "--socket", node.socket, *args],
                          capture_output=True, text=True, timeout=60, env=env)


def k8s_row(node) -> dict:
    out = cli(node, "plugins", "--json")
    assert out.returncode == 0, out.stderr
    return next(r for r in json.loads(out.stdout) if r["name"] == "k8s")


def test_plugin_status_follows_containerd_and_images_error_is_one_line(cluster, tmp_path):
    ctd = Containerd(tmp_path / "ctd")
    sockdir = Path(tempfile.mkdtemp(prefix="bcri-", dir="/tmp"))
    others = {name: {"enabled": False} for name in ("apt", "npm", "dns", "zeroconf")}
    node = cluster.add(config={"plugins": {**others, "docker": {"engine": False},
                                           "k8s": {"socket": str(sockdir / "cri.sock"),
                                                   "runtime_endpoint": ctd.endpoint}}}, peers=None)
    try:
        row = k8s_row(node)
        assert row["status"] == "degraded", row
        assert row["degraded"].startswith(f"containerd not reachable at {ctd.endpoint}"), row
        table = cli(node, "plugins").stdout
        line = next(x for x in table.splitlines() if x.startswith("k8s "))
        assert f"degraded: containerd not reachable at {ctd.endpoint}" in line
        assert "yes" in line.split() and "True" not in table

        out = cli(node, "k8s", "images")
        assert out.returncode == 1 and "Traceback" not in out.stderr
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"Error: containerd not reachable at {ctd.endpoint}"), out.stderr
        assert "failed to connect to all addresses" not in out.stderr and len(lines[0]) < 200

        ctd.start()
        wait_until(lambda: k8s_row(node)["status"] == "ready", 20, what="k8s ready once containerd answers")
        out = cli(node, "k8s", "images")
        assert out.returncode == 0 and "(the runtime holds no images)" in out.stdout, out.stderr

        ctd.stop()
        wait_until(lambda: k8s_row(node)["status"] == "degraded", 20, what="k8s degraded again")
    finally:
        ctd.cleanup()
        shutil.rmtree(sockdir, ignore_errors=True)
