"""`beiran docker pull` as a new user meets it (issue 18): `--platform` for an image built for another
platform is refused like Docker refuses it (items 2), and off a terminal each layer's line is printed
when that layer is done, while the others still download (item 8)."""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
import time

import pytest

from beiran_testkit.registry import beiran, docker_config

pytestmark = pytest.mark.cluster


def test_platform_mismatch_refused_before_any_layer(cluster, registry, test_images):
    (node,) = cluster.start(1, config=docker_config(registry))
    res = beiran(node, "docker", "pull", "--platform", "linux/arm64", "test/img:v1", "--no-load", check=False)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "is built for linux/amd64 only, not linux/arm64" in lines[0], lines[0]
    assert not res.stdout.startswith("Pulled")
    # only the (small) config was fetched to learn that: no layer
    assert set(registry.proxy.blob_gets()) == {test_images.img.config.digest}
    # the platform it is built for, and an index's other platform, pull as before
    out = beiran(node, "docker", "pull", "--platform", "linux/amd64", "test/img:v1", "--no-load", "--no-progress")
    assert "linux/amd64" in out.stdout
    out = beiran(node, "docker", "pull", "--platform", "linux/arm64", "test/multi:v1", "--no-load", "--no-progress")
    assert "linux/arm64" in out.stdout


@pytest.mark.parametrize("nodes", [1, 2])
def test_pull_prints_each_layer_when_it_is_done_not_at_the_end(cluster, registry, test_images, nodes):
    """With a peer (2 nodes), some blobs are fetched by their rendezvous owner for this node."""
    node = cluster.start(nodes, config=docker_config(registry))[0]
    held = test_images.img.layers[-1].digest
    release, release_all = threading.Event(), threading.Event()
    registry.proxy.hold[re.escape(held)] = release
    for layer in test_images.img.layers[:-1]:
        registry.proxy.hold[re.escape(layer.digest)] = release_all
    env = {k: v for k, v in os.environ.items() if not k.startswith("BEIRAN_")}
    proc = subprocess.Popen([sys.executable, "-m", "beiran", "--socket", node.socket, "docker", "pull",
                             "test/img:v1", "--no-load"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(x.rstrip("\n")) for x in proc.stderr], daemon=True)
    reader.start()

    def read(n: int) -> list[str]:
        got: list[str] = []
        deadline = time.monotonic() + 60
        while len(got) < n and time.monotonic() < deadline:
            try:
                got.append(lines.get(timeout=1))
            except queue.Empty:
                continue
        return got

    try:
        # every layer held: the pull says at once what it is fetching
        first = read(1)
        assert first and re.fullmatch(r".*/test/img:v1 \(.*\): 4 blobs, 20\.7 KiB", first[0]), first
        assert proc.poll() is None
        release_all.set()
        seen = read(3)  # config + the 2 layers released; the last one still held
        assert len(seen) == 3, seen
        assert all(re.search(r"done \((origin|peer)\)$", x) for x in seen), seen
        assert held[:19] not in "".join(seen)
        assert proc.poll() is None
    finally:
        release_all.set()
        release.set()
    proc.wait(120)  # (stdout is one line: no pipe fills up)
    stdout = proc.stdout.read()
    reader.join(10)
    rest = []
    while not lines.empty():
        rest.append(lines.get())
    assert proc.returncode == 0, rest
    # (from the origin, or from the peer that is its rendezvous owner: which one depends on the UUIDs)
    assert [x for x in rest if held[:19] in x and re.search(r"done \((origin|peer)\)$", x)], rest
    assert stdout.startswith("Pulled ")


def test_save_draws_progress_on_a_terminal(cluster, registry, test_images, tmp_path):
    (node,) = cluster.start(1, config=docker_config(registry))
    beiran(node, "docker", "pull", "test/img:v1", "--no-load", "--no-progress")
    master, slave = os.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BEIRAN_")}
    env.update(TERM="xterm", COLUMNS="120")
    target = tmp_path / "img.tar"
    proc = subprocess.Popen([sys.executable, "-m", "beiran", "--socket", node.socket, "docker", "save",
                             "test/img:v1", "-o", str(target)], stdout=subprocess.PIPE, stderr=slave, env=env,
                            stdin=subprocess.DEVNULL)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO once the CLI exits
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    out = proc.stdout.read().decode()
    assert proc.wait(60) == 0
    term = b"".join(chunks).decode(errors="replace")
    assert f"test/img:v1 -> {target} written" in term and "━" in term, term
    assert out.startswith(f"{target}: ") and target.stat().st_size > 20_000
