"""DNS rebinding (issue 12, item 8): a web page on the machine whose name now resolves to 127.0.0.1
sends relative requests with its own name in `Host`; the apt proxy refuses them. apt's absolute-form
proxy requests name the archive in `Host` and are served."""

from __future__ import annotations

import http.client

import pytest

from beiran_testkit.aptclient import APT_PORT, add_nodes

pytestmark = pytest.mark.cluster


def _get(node, uri: str, host: str | None = None) -> tuple[int, str]:
    conn = http.client.HTTPConnection(node.ip, APT_PORT, timeout=30)
    try:
        conn.request("GET", uri, headers={"Host": host} if host else {})
        resp = conn.getresponse()
        resp.read()
        return resp.status, resp.reason
    finally:
        conn.close()


def test_apt_proxy_refuses_relative_requests_with_a_rebound_host(cluster, repo, server):
    (node,) = add_nodes(cluster, 1, repo)
    rel = f"/http/127.0.0.1:{server.port}/{repo.name}/dists/{repo.suite}/InRelease"
    status, reason = _get(node, rel, host=f"evil.example:{APT_PORT}")
    assert status == 403 and "does not name this node" in reason, (status, reason)
    status, _ = _get(node, "/_beiran/ping", host="evil.example")
    assert status == 403
    assert sum(server.requests.values()) == 0  # nothing reached the archive for the page
    assert _get(node, rel)[0] == 200  # Host: the proxy's own address
    absolute = f"{server.url}/{repo.name}/dists/{repo.suite}/InRelease"
    assert _get(node, absolute)[0] == 200  # as apt sends it: Host names the archive
