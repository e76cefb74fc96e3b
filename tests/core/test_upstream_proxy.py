"""Behind a corporate proxy: origin requests go through Debian's tinyproxy (its log names each one),
peer traffic (websocket, /info, blob fetches between nodes) never does. https origins through CONNECT."""

from __future__ import annotations

import http.server
import signal
import ssl
import threading
from pathlib import Path

import pytest

from beiran_testkit.daemon import wait_until, write_toml
from beiran_testkit.fixtures import random_blob
from beiran_testkit.pki import make_ca
from beiran_testkit.registry import readme_blocks

DEAD_PROXY = "http://127.0.0.1:9"  # discard: nothing listens; a request sent there fails


def _source(path: str) -> dict:
    return {"plugin": "origin", "name": "files", "path": path}


@pytest.mark.cluster
@pytest.mark.slow  # real daemons: once, in tests(core)
def test_origin_fetches_use_the_proxy_peer_traffic_never_does(cluster, origin, tinyproxy):
    a_data, a_digest = random_blob(300_000, seed=1)
    b_data, b_digest = random_blob(200_000, seed=2)
    origin.put("a.bin", a_data)
    origin.put("b.bin", b_data)
    common = {"origins": {"files": origin.url}, "fetch": {"origin_delegation": False}}
    # n1: the [proxy] section wins over the environment's (dead) proxy
    n1 = cluster.add({**common, "proxy": {"http": tinyproxy.url}}, peers=None,
                     env={"HTTP_PROXY": DEAD_PROXY, "http_proxy": DEAD_PROXY})
    # n2: the environment only, as systemd's Environment= or a shell would set it
    n2 = cluster.add(common, peers=[n1.url], env={"http_proxy": tinyproxy.url, "NO_PROXY": "example.invalid"})
    cluster.wait_connected()

    assert n1.fetch(a_digest, len(a_data), _source("/a.bin"))["sources"] == {"origin": len(a_data)}
    assert n1.blob(a_digest) == a_data
    assert origin.requests["/a.bin"] == 1
    assert tinyproxy.requests() == [f"GET {origin.url}/a.bin HTTP/1.1"]

    # n2 gets a.bin from its peer n1, directly: neither the origin nor the proxy sees it
    wait_until(lambda: any(b["digest"] == a_digest and b["nodes"].get(n1.uuid) == "complete"
                           for b in n2.api("GET", "/blobs?all=true")["blobs"]), 10, what="n1's blob announced")
    assert n2.fetch(a_digest, len(a_data), _source("/a.bin"))["sources"] == {"peer": len(a_data)}
    assert n2.blob(a_digest) == a_data
    assert origin.requests["/a.bin"] == 1
    # ...and b.bin, which no peer has, from the origin through the proxy (the environment's)
    assert n2.fetch(b_digest, len(b_data), _source("/b.bin"))["sources"] == {"origin": len(b_data)}
    assert origin.requests["/b.bin"] == 1
    assert tinyproxy.requests() == [f"GET {origin.url}/a.bin HTTP/1.1", f"GET {origin.url}/b.bin HTTP/1.1"]
    origin_hostport = origin.url.split("//")[1]
    assert set(tinyproxy.upstreams()) == {origin_hostport}, "the proxy opened only the origin"
    for node in (n1, n2):
        assert node.ip not in tinyproxy.log(), "peer traffic went through the proxy"
    assert "origin requests use the upstream proxy: http via" in n1.log()


@pytest.mark.cluster
@pytest.mark.slow  # real daemons: once, in tests(core)
def test_no_proxy_and_reload_switch_the_proxy_live(cluster, origin, tinyproxy):
    data, digest = random_blob(100_000, seed=3)
    more, more_digest = random_blob(100_000, seed=4)
    origin.put("c.bin", data)
    origin.put("d.bin", more)
    cfg = {"origins": {"files": origin.url}, "proxy": {"http": tinyproxy.url, "no_proxy": "127.0.0.0/8"}}
    node = cluster.add(cfg, peers=None)
    assert node.fetch(digest, len(data), _source("/c.bin"))["sources"] == {"origin": len(data)}
    assert origin.requests["/c.bin"] == 1 and tinyproxy.requests() == []  # NO_PROXY matched: direct

    node.config["proxy"] = {"http": tinyproxy.url, "no_proxy": "example.invalid, .corp.example"}
    write_toml(node.dir / "config.toml", node.config)
    node.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "now use the upstream proxy" in node.log(), 10, what="the proxy reloaded")
    assert node.fetch(more_digest, len(more), _source("/d.bin"))["sources"] == {"origin": len(more)}
    assert tinyproxy.requests() == [f"GET {origin.url}/d.bin HTTP/1.1"]


@pytest.mark.cluster
@pytest.mark.slow  # real daemons: once, in tests(core)
def test_https_origin_through_connect(cluster, tinyproxy, tmp_path):
    ca, cert, key = make_ca(tmp_path / "pki")
    root = tmp_path / "https-origin"
    root.mkdir()
    data, digest = random_blob(150_000, seed=5)
    (root / "e.bin").write_bytes(data)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *a, **kw: Quiet(*a, directory=str(root), **kw))
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        # the origin's CA through OpenSSL's own variable: [origins] has no ca_file of its own
        node = cluster.add({"origins": {"files": f"https://127.0.0.1:{port}"},
                            "proxy": {"https": tinyproxy.url}}, peers=None, env={"SSL_CERT_FILE": str(ca)})
        assert node.fetch(digest, len(data), _source("/e.bin"))["sources"] == {"origin": len(data)}
        assert node.blob(digest) == data
        assert tinyproxy.requests() == [f"CONNECT 127.0.0.1:{port} HTTP/1.1"]
    finally:
        server.shutdown()
        server.server_close()


# -- the policy itself, in process -------------------------------------------------------------------
README = Path(__file__).resolve().parents[2] / "README.md"


def _policy(tmp_path, toml: str = "", environ: dict | None = None):
    from beiran.config import load_config
    from beiran.proxies import ProxyPolicy

    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text(toml)
    cfg = load_config(cfg_file, environ=environ or {})
    return cfg, ProxyPolicy.from_config(cfg.proxy)


def test_readme_proxy_snippet_as_written(tmp_path):
    (block,) = [b for b in readme_blocks(README, "toml") if "[proxy]" in b]
    _, policy = _policy(tmp_path, block, {"HTTPS_PROXY": "http://other:1"})
    assert policy.for_url("http", "registry.example.org", 80).netloc == "proxy.example:3128"
    assert policy.for_url("https", "registry-1.docker.io", 443).netloc == "proxy.example:3128"
    for host in ("localhost", "127.0.0.1", "127.9.9.9", "corp.example", "git.corp.example"):
        assert policy.for_url("https", host, 443) is None, host
    assert policy.for_url("https", "notcorp.example", 443) is not None


def test_environment_names_and_precedence(tmp_path):
    from beiran.errors import ConfigError

    _, p = _policy(tmp_path, environ={"HTTP_PROXY": "http://upper:1", "http_proxy": "lower:2",
                                      "HTTPS_PROXY": "http://u:p%40ss@secure:3",
                                      "NO_PROXY": ".a.example,10.0.0.0/8,b:8080"})
    assert p.http.netloc == "lower:2" and p.https.netloc == "secure:3"
    assert p.https.authorization == "Basic " + __import__("base64").b64encode(b"u:p@ss").decode()
    assert p.for_url("http", "x.a.example", 80) is None and p.for_url("http", "a.example", 80) is None
    assert p.for_url("http", "10.1.2.3", 80) is None and p.for_url("http", "11.1.2.3", 80) is not None
    assert p.for_url("http", "b", 8080) is None and p.for_url("http", "b", 80) is not None
    # the file wins; "" turns a proxy off; "*" bypasses everything
    _, p = _policy(tmp_path, '[proxy]\nhttp = ""\nhttps = "http://mine:4"\n', {"http_proxy": "http://env:1",
                                                                              "https_proxy": "http://env:1"})
    assert p.http is None and p.https.netloc == "mine:4"
    _, p = _policy(tmp_path, environ={"https_proxy": "http://env:1", "no_proxy": "*"})
    assert p.for_url("https", "anything", 443) is None
    with pytest.raises(ConfigError, match="environment variable HTTPS_PROXY: only http:// proxies"):
        _policy(tmp_path, environ={"HTTPS_PROXY": "socks5://s:1080"})
    with pytest.raises(ConfigError, match=r"unknown setting proxy\.ftp"):
        _policy(tmp_path, '[proxy]\nftp = "x"\n')
    cfg, _ = _policy(tmp_path, '[proxy]\nhttps = "http://me:secret@proxy:3128"\n')
    assert cfg.to_public_dict()["proxy"]["https"] == "http://me:***@proxy:3128"
