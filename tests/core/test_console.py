"""The console at /ui/: small, self-contained, read-only, answered only to client addresses, and live
in a real browser (Debian's chromium through selenium) on a 3-node cluster."""

from __future__ import annotations

import http.client
import json
import re

import pytest

from beiran_testkit.browser import chromium, save_screenshot, text_of
from beiran_testkit.daemon import wait_until
from beiran_testkit.fixtures import random_blob

PAGE_FILES = ["/ui/", "/ui/console.js", "/ui/console.css"]


def _get(node, path, method="GET", host=None):
    conn = http.client.HTTPConnection(node.ip, node.port, timeout=10)
    try:
        conn.request(method, path, headers={"Host": host} if host else {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


@pytest.mark.each_plugin  # an installed plugin changes what this shows
def test_page_is_small_self_contained_and_read_only(cluster):
    (node,) = cluster.start(1)
    total = 0
    for path in PAGE_FILES:
        status, headers, body = _get(node, path)
        assert status == 200, (path, body[:200])
        assert "default-src 'none'" in headers["Content-Security-Policy"]
        total += len(body)
        # nothing from outside: no absolute URL in any src/href/url()/fetch()
        assert not re.search(rb"""(src|href)\s*=\s*["']?(https?:)?//|url\(\s*["']?(https?:)?//|fetch\(\s*["']https?:""",
                             body), path
    assert total < 200_000, f"the console weighs {total} bytes"
    assert _get(node, "/ui")[0] == 302
    for method in ("POST", "PUT", "DELETE"):
        assert _get(node, "/ui/state", method)[0] == 405, method
    state = json.loads(_get(node, "/ui/state")[2])
    assert state["nodes"][0]["uuid"] == node.uuid and state["nodes"][0]["self"]
    assert {"local", "peer", "origin"} >= set(state["bytes"]["by_source"])


def test_console_is_refused_outside_client_cidrs(cluster):
    (node,) = cluster.start(1, config={"client_cidrs": ["192.0.2.0/24"]})
    for path in [*PAGE_FILES, "/ui/state"]:
        assert _get(node, path)[0] == 403, path
    assert node.api("GET", "/ui/state")["node"]["uuid"] == node.uuid  # the unix socket always may


@pytest.mark.cluster
def test_a_browser_shows_every_node_and_bytes_by_source_live(cluster, tmp_path):
    nodes = cluster.start(3)
    cluster.wait_connected()
    n1, n2, _ = nodes
    with chromium() as driver:
        driver.get(f"{n1.url}/ui/")
        wait_until(lambda: all(n.uuid in text_of(driver, "#nodes") for n in nodes), timeout=20,
                   what="every node's UUID in the nodes table")
        rows = {r.split()[0]: r for r in text_of(driver, "#nodes tbody").splitlines()}
        assert "self" in rows[n1.uuid]
        assert "online" in rows[n2.uuid] and "online" in rows[nodes[2].uuid]
        assert text_of(driver, "#bytes-peer") == "0 B"

        data, digest = random_blob(3 << 20, seed=7)
        n2.add_blob(data)
        wait_until(lambda: next(n for n in n1.api("GET", "/ui/state")["nodes"] if n["uuid"] == n2.uuid)["blobs"],
                   what="node 1 to learn that node 2 holds the blob")
        n1.fetch(digest, len(data))  # node 1 takes it from node 2: a peer transfer, no reload of the page
        wait_until(lambda: text_of(driver, "#bytes-peer") == "3.0 MiB", timeout=10,
                   what="the peer bytes figure to update")
        assert text_of(driver, "#bytes-saved") == "3.0 MiB"
        shot = save_screenshot(driver, "console-core.png", also=tmp_path / "console.png")
        assert shot.stat().st_size > 10_000


def test_beiran_ui_prints_the_url_and_its_local_relay_serves_only_the_console(cluster):
    import subprocess
    import sys
    import urllib.error
    import urllib.request

    (node,) = cluster.start(1)
    assert node.cli("ui").strip() == f"http://{node.ip}:{node.port}/ui/"
    relay = subprocess.Popen([sys.executable, "-m", "beiran", "--socket", node.socket, "ui", "--serve", "0"],
                             stdout=subprocess.PIPE, text=True)
    try:
        url = relay.stdout.readline().split()[0]
        assert url.startswith("http://127.0.0.1:") and url.endswith("/ui/")
        base = url.removesuffix("/ui/")
        with urllib.request.urlopen(base + "/ui/state", timeout=10) as resp:
            assert json.loads(resp.read())["node"]["uuid"] == node.uuid
        with urllib.request.urlopen(url, timeout=10) as resp:
            assert b"console.js" in resp.read()
        for path in ("/config", "/blobs", "/ui/../config"):  # the socket is admin: the relay must not be
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(base + path, timeout=10)
            assert err.value.code == 404, path
    finally:
        relay.terminate()
        relay.wait(10)
