"""Large clusters, for real: 24 daemons on loopback with `full_mesh_max = 6` run on SWIM membership,
the who-has directory and a bounded link pool (beiran/peer/cluster.py) instead of a full mesh.

One test (the cluster takes a while to start on two cores), several outcomes: every node's open
peer connections stay bounded; a blob is found through the directory by a node that never talked
to its holder; a cold blob leaves the origin once for 8 requesters; killing the owner mid-fetch costs
at most one more origin fetch; a stopped node is marked offline everywhere.
"""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time

import pytest

from beiran.fetch import placement
from beiran_testkit.daemon import Daemon, wait_until
from beiran_testkit.fixtures import random_blob

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
MiB = 1 << 20
N = 24
MAX_LINKS = 12  # the link pool's cap; the test's bound (16) leaves room for in-flight transfers
TOKEN = "large-cluster-test-token-0123456789"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class LinkWatch(threading.Thread):
    """Polls every node's `beiran_peer_links_open` gauge (over TCP /metrics, as Prometheus would)."""

    def __init__(self, nodes: list[Daemon]) -> None:
        super().__init__(daemon=True)
        self.nodes, self.peak = nodes, {n.name: 0.0 for n in nodes}
        self.stop_flag = threading.Event()
        self.samples = 0

    def run(self) -> None:
        while not self.stop_flag.is_set():
            for node in self.nodes:
                if not node.alive:
                    continue
                try:
                    _, _, body = node.tcp("GET", "/metrics", timeout=5)
                except OSError:
                    continue
                for line in body.decode().splitlines():
                    if line.startswith("beiran_peer_links_open "):
                        self.peak[node.name] = max(self.peak[node.name], float(line.split()[-1]))
                        self.samples += 1
            self.stop_flag.wait(0.5)


def links_open(node: Daemon) -> float:
    return node.api("GET", "/stats")["metrics"]["beiran_peer_links_open"]


def cluster_info(node: Daemon) -> dict:
    return node.api("GET", "/nodes")["cluster"]


def cpu_seconds(node: Daemon) -> float:
    assert node.proc is not None
    with open(f"/proc/{node.proc.pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pull_all(nodes: list[Daemon], digest: str, size: int, src: dict) -> dict[str, dict]:
    results: dict[str, dict] = {}
    barrier = threading.Barrier(len(nodes))

    def go(node: Daemon) -> None:
        barrier.wait()
        try:
            results[node.name] = node.fetch(digest, size, src, timeout=120)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            results[node.name] = {"error": repr(exc)}

    threads = [threading.Thread(target=go, args=(n,)) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(150)
    return results


def test_large_cluster_on_membership_directory_and_bounded_links(cluster, origin):
    t_start = time.monotonic()
    cfg = {"origins": {"o": origin.url}, "cluster": {"full_mesh_max": 6, "max_links": MAX_LINKS},
           "cluster_token": TOKEN, "log_level": "info"}
    nodes: list[Daemon] = []
    for _ in range(N):
        seeds = [n.url for n in nodes[:2]]  # each node names only the first two: the rest is gossip
        nodes.append(cluster.add(cfg, peers=seeds, start=False))
    for node in nodes:
        node.start(wait=False)
    watch = LinkWatch(nodes)  # from the start: the full mesh of the first few must not spike either
    watch.start()
    try:
        for node in nodes:
            node.wait_ready(90)
        t_ready = time.monotonic()
        for node in nodes:
            wait_until(lambda node=node: cluster_info(node)["mode"] == "swim"
                       and cluster_info(node)["members"] == N, 60, interval=0.2,
                       what=f"{node.name} to run in swim mode with {N} members")
        formed = time.monotonic() - t_ready
        listing = nodes[5].cli("node", "list", "--json")
        assert listing[0]["cluster"]["mode"] == "swim" and listing[0]["cluster"]["members"] == N
        assert sum(1 for n in listing if n.get("membership") == "alive") == N
        assert "cluster mode: swim" in nodes[5].cli("node", "list")
        assert nodes[5].cli("node", "info", nodes[-1].uuid, "--json")["membership"] == "alive"

        # idle cost of membership: datagrams and CPU per node over a few seconds
        before = [(cluster_info(n), cpu_seconds(n)) for n in nodes]
        idle_s = 5.0
        time.sleep(idle_s)
        after = [(cluster_info(n), cpu_seconds(n)) for n in nodes]
        msgs = max((a["datagrams"]["sent"] - b["datagrams"]["sent"]) / idle_s
                   for (b, _), (a, _) in zip(before, after, strict=True))
        sent_bytes = max((a["datagrams"]["bytes_sent"] - b["datagrams"]["bytes_sent"]) / idle_s
                         for (b, _), (a, _) in zip(before, after, strict=True))
        cpu = max((ca - cb) / idle_s for (_, cb), (_, ca) in zip(before, after, strict=True))

        # a blob one node holds is found through the directory by a node that never talked to it
        holder, far = nodes[N // 2], nodes[-1]
        data, digest = random_blob(4 * MiB, 41)
        assert holder.add_blob(data) == digest
        t0 = time.monotonic()
        got = wait_until(lambda: "error" not in (r := far.fetch(digest, len(data))) and r, 20, interval=0.2,
                         what="the far node to fetch the holder's blob")
        found_s = time.monotonic() - t0
        assert got["sources"].get("peer") == len(data) and not got["sources"].get("origin"), got
        assert sha(far.blob(digest)) == digest

        # one node fetching from 20 different holders keeps links to at most max_links of them (the
        # least recently used idle one is closed): without the pool it would keep all 20 open
        spread = [n for n in nodes if n is not far][:20]
        for i, node in enumerate(spread):
            small, small_digest = random_blob(64 << 10, 100 + i)
            node.add_blob(small)
            wait_until(lambda d=small_digest, n=len(small): "error" not in far.fetch(d, n), 20, interval=0.2,
                       what=f"the far node to fetch {node.name}'s blob")
        far_links = links_open(far)
        assert far_links <= MAX_LINKS, far_links

        # a cold blob pulled by 8 nodes at once leaves the origin once
        cold, cold_digest = random_blob(16 * MiB, 42)
        origin.put("cold", cold)
        origin.rate = 32 * MiB
        pullers = nodes[4:12]
        results = pull_all(pullers, cold_digest, len(cold), {"plugin": "origin", "name": "o", "path": "/cold"})
        assert all("error" not in r for r in results.values()), results
        for node in pullers:
            assert sha(node.blob(cold_digest)) == cold_digest
        assert origin.requests["/cold"] == 1

        # the owner killed mid-fetch: the next owner in the chain fetches, at most one more origin fetch
        blob, blob_digest = random_blob(24 * MiB, 43)
        origin.put("owned", blob)
        origin.rate = 8 * MiB
        ranked = placement.rank(blob_digest, [n.uuid for n in nodes])
        by_uuid = {n.uuid: n for n in nodes}
        owner = by_uuid[ranked[0]]
        requesters = [by_uuid[u] for u in ranked[3:9]]
        box: dict[str, dict] = {}
        puller = threading.Thread(target=lambda: box.update(pull_all(
            requesters, blob_digest, len(blob), {"plugin": "origin", "name": "o", "path": "/owned"})))
        puller.start()
        wait_until(lambda: origin.bytes["/owned"] > 2 * MiB, 30, what="the owner's origin fetch to be under way")
        owner.kill()
        puller.join(180)
        assert all("error" not in r for r in box.values()), box
        for node in requesters:
            assert sha(node.blob(blob_digest)) == blob_digest
        owner_killed_origin = origin.requests["/owned"]
        assert owner_killed_origin <= 2

        # a stopped node: every other node marks it offline (membership declares it dead)
        live = [n for n in nodes if n.alive]
        stopped = next(n for n in live[3:] if n is not far)
        others = [n for n in live if n is not stopped]
        assert stopped.proc is not None
        stopped.proc.send_signal(signal.SIGSTOP)
        t0 = time.monotonic()
        seen: dict[str, float] = {}
        try:
            deadline = t0 + 10.0  # the bound for "every other node marks it offline"
            while len(seen) < len(others) and time.monotonic() < deadline:
                for n in others:
                    if n.name not in seen and n.entry(stopped)["status"] == "offline":
                        seen[n.name] = time.monotonic() - t0
                time.sleep(0.1)
        finally:
            stopped.proc.send_signal(signal.SIGCONT)
        missing = [n.name for n in others if n.name not in seen]
        assert not missing, f"still online for {missing} after 10 s"
    finally:
        watch.stop_flag.set()
        watch.join(10)
    peak = max(watch.peak.values())
    print(f"\n{N} daemons, full_mesh_max=6: all up after {t_ready - t_start:.0f}s, then "
          f"swim with all {N} members everywhere after {formed:.1f}s; "
          f"open peer connections per node max {peak:.0f} ({watch.samples} samples); "
          f"idle per node max: {msgs:.1f} datagrams/s, {sent_bytes:.0f} B/s, {cpu * 100:.1f}% of a core; "
          f"directory find+fetch {found_s:.2f}s; links of the node that fetched from 20 holders {far_links:.0f}; "
          f"cold blob x8 origin fetches {origin.requests['/cold']}; "
          f"owner killed mid-fetch origin fetches {owner_killed_origin}; offline after SIGSTOP max "
          f"{max(seen.values()):.1f}s (median {sorted(seen.values())[len(seen) // 2]:.1f}s); "
          f"test {time.monotonic() - t_start:.0f}s")
    assert watch.samples >= N and peak <= 16, watch.peak


def test_mode_switches_to_swim_and_back_with_hysteresis_without_restart(cluster):
    """full_mesh_max = 3: swim with 4+ members, still swim at 3 (hysteresis), a full mesh again at 2
    (3/4 of the threshold), with the websockets back; no daemon restarts."""
    cfg = {"cluster": {"full_mesh_max": 3}, "log_level": "info"}
    first = cluster.add(cfg, peers=[])
    nodes = [first] + [cluster.add(cfg, peers=[first.url], start=False) for _ in range(4)]
    for node in nodes[1:]:
        node.start(wait=False)
    for node in nodes[1:]:
        node.wait_ready(60)

    def mode(node: Daemon) -> tuple[str, int]:
        info = cluster_info(node)
        return info["mode"], info["members"]

    for node in nodes:
        wait_until(lambda node=node: mode(node) == ("swim", 5), 30, interval=0.2, what=f"{node.name} in swim")
    assert not nodes[0].api("GET", "/stats")["peer_messages"]  # no peer websockets above the threshold
    for node in nodes[3:]:
        node.stop()  # a graceful stop leaves the membership at once
    for node in nodes[:3]:
        wait_until(lambda node=node: mode(node)[1] == 3, 20, interval=0.2, what=f"{node.name} to see 3 members")
        assert mode(node)[0] == "swim"
    nodes[2].stop()
    for node in nodes[:2]:
        wait_until(lambda node=node: mode(node) == ("full mesh", 2), 20, interval=0.2,
                   what=f"{node.name} back to a full mesh")
    wait_until(lambda: nodes[1].uuid in nodes[0].online_peers() and nodes[0].uuid in nodes[1].online_peers(),
               20, what="the two nodes' websocket to come back")
    listing = nodes[0].cli("node", "list")
    assert "cluster mode: full mesh (2 members" in listing
