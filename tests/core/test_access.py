"""The access layer in-process: each kind of route (admin, peer with proof, package client, loopback,
public) answers whom it should, the Host check against DNS rebinding, and the private-blob rule."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile

import pytest
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_unix_socket
from tornado.testing import AsyncHTTPTestCase, gen_test
from tornado.web import Application

from beiran.access import Access, check_blob_access, host_allowed
from beiran.config import load_config
from beiran.context import DaemonContext
from beiran.handlers import BaseHandler
from beiran.peer.auth import PeerAuth
from beiran.peer.availability import Availability
from beiran.peer.manager import PeerManager

TOKEN = "s3cret"
ME, N2, OTHER, GRANTED = (f"00000000-0000-4000-8000-00000000000{i}" for i in range(1, 5))  # node UUIDs


class _Store:
    """Just the store's access policies (the rule under test lives in beiran.access)."""

    def __init__(self) -> None:
        self.access_policies: list = []
        self.asked: list[tuple[str, str | None]] = []

    def check_access(self, digest: str, peer: str | None) -> None:
        from beiran.errors import Forbidden

        self.asked.append((digest, peer))
        if peer != GRANTED:
            raise Forbidden("private")


def _route(kind: Access, **extra):
    class H(BaseHandler):
        access = kind
        method_access = extra

        def get(self) -> None:
            check_blob_access(self, "sha256:" + "a" * 64)
            self.write_json({"admitted": str(self.admitted)})

        def delete(self) -> None:
            self.write_json({"deleted": True})

    return H


class AccessTest(AsyncHTTPTestCase):
    def get_app(self) -> Application:
        cfg = load_config(environ={}, overrides={"data_dir": tempfile.mkdtemp(prefix="beiran-access-")})
        cfg.client_hosts = ["mirror.example"]
        self.ctx = DaemonContext(config=cfg)
        self.ctx.auth = PeerAuth(TOKEN, ME)
        self.ctx.store = self.store = _Store()  # type: ignore[assignment]
        self.ctx.peers = PeerManager(self.ctx, Availability())  # its peer_cidrs policy (nothing dialed)
        return Application([
            (r"/admin", _route(Access.ADMIN)),
            (r"/peer", _route(Access.PEER, DELETE=Access.ADMIN)),
            (r"/client", _route(Access.CLIENT)),
            (r"http://[^/]+/client", _route(Access.CLIENT)),  # a proxy request in absolute form
            (r"/loopback", _route(Access.LOOPBACK)),
            (r"/public", _route(Access.PUBLIC)),
            (r"/either", _route(Access.PEER | Access.CLIENT)),
        ], ctx=self.ctx)

    def code(self, path: str, method: str = "GET", **headers: str) -> int:
        return self.fetch(path, method=method, headers=headers).code

    def signed(self, path: str, uuid: str = N2, method: str = "GET") -> dict[str, str]:
        return PeerAuth(TOKEN, uuid).headers(method, path)

    def test_each_kind_of_route_over_tcp(self):
        assert self.code("/admin") == 403
        assert self.code("/public") == 200
        assert self.code("/loopback") == 200  # the test client is on 127.0.0.1
        assert self.code("/client") == 200
        assert self.code("/peer") == 401  # a cluster token is set: no proof, no answer
        assert self.code("/peer", **self.signed("/peer")) == 200
        assert self.code("/peer", **PeerAuth("wrong", N2).headers("GET", "/peer")) == 401
        assert self.code("/peer", method="DELETE", **self.signed("/peer", method="DELETE")) == 403
        assert self.code("/either") == 200  # a package client may read it without a proof

    def test_package_clients_need_their_cidr_and_a_host_naming_this_node(self):
        port = self.get_http_port()
        for host in (f"127.0.0.1:{port}", f"[::1]:{port}", f"localhost:{port}", "x.localhost",
                     f"mirror.example:{port}", "MIRROR.example.", socket.gethostname()):
            assert self.code("/client", Host=host) == 200, host
        for host in (f"evil.example:{port}", "127.0.0.1.nip.io", "localhost.evil.example", "[::1"):
            assert self.code("/client", Host=host) == 403, host
        assert self.code("/either", Host="evil.example") == 401  # falls to the peer rule: proof needed
        self.ctx.config.client_cidrs = ["10.99.0.0/16"]
        assert self.code("/client") == 403

    @gen_test
    async def test_absolute_form_proxy_requests_name_their_origin(self):
        for target, status in ((b"http://deb.example/client", b"200"), (b"/client", b"403")):
            reader, writer = await asyncio.open_connection("127.0.0.1", self.get_http_port())
            writer.write(b"GET " + target + b" HTTP/1.1\r\nHost: deb.example\r\nConnection: close\r\n\r\n")
            reply = await reader.read()
            writer.close()
            assert reply.startswith(b"HTTP/1.1 " + status), (target, reply[:100])

    def test_private_blobs_go_to_this_machines_clients_and_proven_peers_only(self):
        assert self.code("/peer", **self.signed("/peer", OTHER)) == 200  # no policies: open
        self.store.access_policies.append(object())
        assert self.code("/client") == 200 and self.store.asked == []  # the node's own runtime
        assert self.code("/peer", **self.signed("/peer", OTHER)) == 403
        assert self.code("/peer", **self.signed("/peer", GRANTED)) == 200
        assert [p for _, p in self.store.asked] == [OTHER, GRANTED]
        assert self.code("/public") == 403  # no proof of who asks: the policies decide, with None

    @gen_test
    async def test_the_unix_socket_is_the_administrator(self):
        path = os.path.join(tempfile.mkdtemp(prefix="beiran-sock-"), "s")
        server = HTTPServer(self._app)
        server.add_socket(bind_unix_socket(path))
        try:
            for route in ("/admin", "/peer", "/client"):
                reader, writer = await asyncio.open_unix_connection(path)
                writer.write(f"GET {route} HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n".encode())
                reply = await reader.read()
                writer.close()
                assert reply.startswith(b"HTTP/1.1 200"), (route, reply[:200])
        finally:
            server.stop()


def test_host_names_parsed_with_ports_and_ipv6():
    cfg = load_config(environ={}, overrides={"data_dir": tempfile.mkdtemp(prefix="beiran-access-")})
    assert host_allowed(cfg, None) and host_allowed(cfg, "")
    assert host_allowed(cfg, "[fe80::1]:3142") and host_allowed(cfg, "10.1.2.3")
    assert not host_allowed(cfg, "attacker.test:3142")
    cfg.client_hosts = ["node1.lan"]
    assert host_allowed(cfg, "node1.lan:8888") and not host_allowed(cfg, "node2.lan:8888")


def test_handlers_that_declare_access_the_old_way_fail_at_import():
    with pytest.raises(TypeError, match="declare `access`"):
        type("Old", (BaseHandler,), {"peer_auth": True})
