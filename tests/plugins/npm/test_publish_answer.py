"""`npm publish` through the proxy (issue 18 item 11): npm stops with its own ENEEDAUTH unless it has a
credential for the registry, so the user never saw Beiran's explanation. With the lines
`beiran npm configure` prints, real npm sends the publish and prints Beiran's answer: why, and where
to publish instead. Reads work the same with those lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from beiran_testkit.verdaccio import ALPHA, NPMRC_DEFAULTS, npm_daemon_config, write_project

pytestmark = pytest.mark.cluster


def test_npm_publish_through_the_proxy_prints_beirans_answer(cluster, upstream, registry, work):
    (node,) = cluster.start(1, config=npm_daemon_config(upstream.url))
    # as a user would: `beiran npm configure >> ~/.npmrc`
    out = subprocess.run([sys.executable, "-m", "beiran", "--socket", node.socket, "npm", "configure"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rc = work / "npmrc"
    rc.write_text(out.stdout + "".join(f"{k}={v}\n" for k, v in NPMRC_DEFAULTS.items()))
    env = {k: v for k, v in os.environ.items() if not k.lower().startswith("npm_config_")}
    env.update({"npm_config_userconfig": str(rc), "npm_config_globalconfig": str(rc) + ".global",
                "NO_UPDATE_NOTIFIER": "1"})

    pkg = write_project(work / "pkg", {}, name="beiran-test-publish-answer")
    data = json.loads((pkg / "package.json").read_text())
    data["private"] = False
    (pkg / "package.json").write_text(json.dumps(data))
    (pkg / "index.js").write_text("module.exports = 1;\n")
    pub = subprocess.run(["npm", "publish", "--userconfig", str(rc), "--cache", str(work / "c")], cwd=pkg,
                         env=env, capture_output=True, text=True, timeout=120)
    assert pub.returncode != 0
    assert "ENEEDAUTH" not in pub.stderr, pub.stderr
    # npm prints the `error` field of the answer: why, and where to publish instead
    assert "only serves package reads" in pub.stderr, pub.stderr
    assert f"--registry {upstream.url}/" in pub.stderr and 'writes = "forward"' in pub.stderr
    assert not any(m == "PUT" for m, _ in upstream.requests)

    # the same npmrc installs through the proxy as before
    proj = write_project(work / "proj", {ALPHA: "1.0.0"})
    inst = subprocess.run(["npm", "install", "--userconfig", str(rc), "--cache", str(work / "c")], cwd=proj,
                          env=env, capture_output=True, text=True, timeout=240)
    assert inst.returncode == 0, inst.stderr
    assert json.loads((proj / "node_modules" / ALPHA / "package.json").read_text())["version"] == "1.0.0"
