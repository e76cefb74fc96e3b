"""Must show 7: malformed requests, CONNECT, non-apt URLs, traversal, upstream 404/500 and an
unreachable upstream get clear HTTP errors (the reason phrase is what apt prints); the daemon is
unharmed and keeps serving."""

from __future__ import annotations

import http.client
import json
import socket

import pytest

from beiran_testkit.aptclient import APT_PORT, AptClient, add_nodes, client_for, proxy_of

pytestmark = pytest.mark.cluster


def ask(node, method: str, uri: str) -> tuple[int, str, dict]:
    conn = http.client.HTTPConnection(node.ip, APT_PORT, timeout=30)
    try:
        conn.request(method, uri)
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, resp.reason, json.loads(body) if body.startswith(b"{") else {}
    finally:
        conn.close()


def raw(node, data: bytes) -> bytes:
    with socket.create_connection((node.ip, APT_PORT), timeout=10) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def test_bad_requests_and_upstream_failures_get_clear_errors(cluster, repo, server, tmp_path):
    (node,) = add_nodes(cluster, 1, repo)
    up = server.url

    assert raw(node, b"\x16\x03\x01garbage\r\n\r\n").startswith(b"HTTP/1.1 400")
    status, reason, _ = ask(node, "GET", "relative/path")
    assert status == 400 and "malformed proxy request" in reason
    status, reason, _ = ask(node, "CONNECT", "deb.debian.org:443")
    assert status == 405 and "CONNECT" in reason and "/https/" in reason
    status, reason, _ = ask(node, "POST", f"{up}/debian/dists/stable/InRelease")
    assert status == 405
    status, reason, body = ask(node, "GET", f"{up}/etc/passwd")
    assert status == 403 and "not an apt archive file" in body["message"]
    status, reason, _ = ask(node, "GET", "/ftp/example.org/debian/dists/stable/InRelease")
    assert status == 404 and "/https/" in reason
    for uri in (f"/http/127.0.0.1:{server.port}/debian/../../../etc/passwd",
                f"/http/127.0.0.1:{server.port}/debian/%2e%2e/%2e%2e/etc/shadow.deb",
                f"{up}/debian/pool/..%2f..%2f/x.deb"):
        status, reason, _ = ask(node, "GET", uri)
        assert status == 400 and "'..'" in reason, (uri, status, reason)
    status, reason, _ = ask(node, "GET", "/http/bad_host!/debian/InRelease")
    assert status == 400 and "host" in reason
    assert sum(server.requests.values()) == 0  # none of that reached the upstream

    status, reason, _ = ask(node, "GET", f"{up}/debian/pool/main/n/nope/nope_1.0_all.deb")
    assert status == 404 and "no such file" in reason
    server.fail["/debian/dists/stable/InRelease"] = 500
    c = client_for(tmp_path, "c500", node, repo, up)
    out = c.update(check=False)
    assert "upstream answered 500" in out.stdout + out.stderr
    del server.fail["/debian/dists/stable/InRelease"]

    gone = AptClient(tmp_path / "apt-gone", [repo.source_line("http://127.0.0.1:9")], proxy=proxy_of(node))
    out = gone.update(check=False)
    assert "cannot connect to 127.0.0.1:9" in out.stdout + out.stderr, out.stdout + out.stderr
    assert "no copy on this node or its peers" in out.stdout + out.stderr

    # unharmed: the daemon answers and apt works through the proxy
    assert node.api("GET", "/ping")["pong"] is True
    c.update()
    c.download("hello")
    assert c.debs() == repo.expected("hello", "libhello")
