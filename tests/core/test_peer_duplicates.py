"""Issue 18 item 9: two nodes that dial each other at once keep one connection of the pair without
ever marking the other node offline (no "offline: duplicate connection", then "online"), and a
normal start is quiet at INFO."""

from __future__ import annotations

import threading
import time

import pytest

from beiran_testkit.daemon import Daemon, wait_until
from beiran_testkit.fixtures import random_blob

pytestmark = pytest.mark.cluster


def _info_lines(node: Daemon) -> list[str]:
    return [x for x in node.log().splitlines() if " INFO " in x]


def test_duplicate_connections_never_mark_the_node_offline(cluster):
    a = cluster.add(peers=[f"http://{cluster.ip(1)}:8888"], start=False)
    b = cluster.add(peers=[a.url], start=False)
    data, digest = random_blob(4096, 51)
    duplicates = 0
    for _ in range(2):  # each round both dial at once: a duplicate pair is the normal case
        a.start(wait=False)
        b.start(wait=False)
        a.wait_ready()
        b.wait_ready()
        if not any(x["digest"] == digest for x in a.api("GET", "/blobs")["blobs"]):
            a.add_blob(data)
        wait_until(lambda: any(x["digest"] == digest and a.uuid in x["nodes"]
                               for x in b.api("GET", "/blobs?all=true")["blobs"]), 15,
                   what="b to learn a holds the blob")
        gaps: list[float] = []
        stop = threading.Event()

        def watch(stop: threading.Event = stop, gaps: list[float] = gaps) -> None:
            # from the moment b knows a holds it, b must never think nobody holds it
            while not stop.is_set():
                view = b.api("GET", "/blobs?all=true")["blobs"]
                if not any(x["digest"] == digest and a.uuid in x["nodes"] for x in view):
                    gaps.append(time.monotonic())
                time.sleep(0.01)
        watcher = threading.Thread(target=watch)
        watcher.start()
        time.sleep(1.5)
        stop.set()
        watcher.join()
        assert not gaps, f"b lost sight of a's blob {len(gaps)} times"
        if not any(x["digest"] == digest for x in b.api("GET", "/blobs")["blobs"]):
            assert b.fetch(digest, len(data))["sources"] == {"peer": len(data)}
        logs = a.log() + b.log()
        duplicates += logs.count("duplicate connection; keeping")
        assert "offline" not in logs, [x for x in logs.splitlines() if "offline" in x]
        a.stop()
        b.stop()
        a.log_path.write_text("")
        b.log_path.write_text("")
    print(f"\nduplicate connections replaced in 2 rounds: {duplicates}")
    assert duplicates >= 1  # the path under test was taken


def test_a_normal_start_is_quiet_at_info(cluster):
    n1, n2 = cluster.start(2)
    data, digest = random_blob(4096, 52)
    n1.add_blob(data)
    wait_until(lambda: n2.fetch(digest, len(data)).get("sources") == {"peer": len(data)}, 15,
               what="n2 to fetch from n1")
    time.sleep(1.0)
    for node in (n1, n2):
        lines = _info_lines(node)
        # the start-up line and one "online" per peer; nothing per connection attempt or request
        assert len(lines) <= 3, lines
        assert sum("online" in x for x in lines) == 1, lines
