"""`[cluster]` settings and the membership datagram codec, in process (no daemon)."""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid

import pytest

from beiran.config import load_config
from beiran.errors import ConfigError
from beiran.peer.transport import MEMBERSHIP, DatagramTransport


def test_cluster_settings_defaults_env_and_validation(tmp_path):
    cfg = load_config(environ={})
    assert (cfg.cluster.full_mesh_max, cfg.cluster.max_links) == (64, 64)
    cfg = load_config(environ={"BEIRAN_CLUSTER__FULL_MESH_MAX": "6", "BEIRAN_CLUSTER__MAX_LINKS": "12"})
    assert (cfg.cluster.full_mesh_max, cfg.cluster.max_links) == (6, 12)
    for bad in ("1", "true", '"many"', "2.5"):
        with pytest.raises(ConfigError, match=r"cluster\.full_mesh_max"):
            load_config(environ={"BEIRAN_CLUSTER__FULL_MESH_MAX": bad})
    f = tmp_path / "c.toml"
    f.write_text("[cluster]\nfull_mesh_max = 8\nmesh = 1\n")
    with pytest.raises(ConfigError, match=r"unknown setting cluster\.mesh"):
        load_config(f, environ={})


class _Wire:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sent.append((data, addr))


def _pair(token_a: str | None, token_b: str | None, allowed=lambda host: True):
    got: list[tuple[bytes, str, str, bytes]] = []
    a = DatagramTransport(str(uuid.uuid4()), token_a, allowed, lambda *m: None)
    b = DatagramTransport(str(uuid.uuid4()), token_b, allowed, lambda *m: got.append(m))
    wire = _Wire()
    a.transport = wire  # type: ignore[assignment]
    return a, b, wire, got


def test_datagrams_authenticated_fresh_once_and_only_from_allowed_addresses():
    a, b, wire, got = _pair("tok", "tok")
    a.send(MEMBERSHIP, "127.0.0.5:8888", b'["g",[]]')
    data, where = wire.sent[-1]
    assert where == ("127.0.0.5", 8888)
    b.datagram_received(data, ("127.0.0.9", 8888))
    assert got == [(MEMBERSHIP, a.uuid.decode(), "127.0.0.9:8888", b'["g",[]]')]
    b.datagram_received(data, ("127.0.0.9", 8888))  # the same datagram again: a replay
    assert len(got) == 1
    a.send(MEMBERSHIP, "127.0.0.5:8888", b'["g",[1]]')
    tampered = bytearray(wire.sent[-1][0])
    tampered[-2] ^= 1
    b.datagram_received(bytes(tampered), ("127.0.0.9", 8888))
    assert len(got) == 1
    b.datagram_received(wire.sent[-1][0], ("127.0.0.9", 8888))  # the untampered one is still fresh
    assert len(got) == 2
    # many datagrams in order: all heard (the replay memory's floor never drops fresh ones)
    for i in range(600):
        a.send(MEMBERSHIP, "127.0.0.5:8888", b"[%d]" % i)
        b.datagram_received(wire.sent[-1][0], ("127.0.0.9", 8888))
    assert len(got) == 602
    # another token, no token, an old timestamp, a source address that is not allowed: dropped
    c, d, wire2, got2 = _pair("other", "tok")
    c.send(MEMBERSHIP, "127.0.0.5:8888", b"[]")
    d.datagram_received(wire2.sent[-1][0], ("127.0.0.9", 8888))
    e, f, wire3, got3 = _pair(None, "tok")
    e.send(MEMBERSHIP, "127.0.0.5:8888", b"[]")
    f.datagram_received(wire3.sent[-1][0], ("127.0.0.9", 8888))
    assert got2 == [] and got3 == []
    g, h, wire4, got4 = _pair("tok", "tok", allowed=lambda host: host.startswith("10."))
    head = b"BSW1m" + g.uuid + int((time.time() - 120) * 1e6).to_bytes(8, "big")  # two minutes old
    assert g.key is not None
    h.datagram_received(head + hmac.new(g.key, head + b"[]", hashlib.sha256).digest() + b"[]",
                        ("10.0.0.9", 8888))
    g.send(MEMBERSHIP, "127.0.0.5:8888", b"[]")  # not allowed: never sent
    assert wire4.sent == []
    g.send(MEMBERSHIP, "10.0.0.5:8888", b"[]")
    h.datagram_received(wire4.sent[-1][0], ("127.0.0.9", 8888))  # from a source not allowed
    assert got4 == []
    h.datagram_received(wire4.sent[-1][0], ("10.0.0.9", 8888))
    assert len(got4) == 1


def test_no_datagram_over_1200_bytes_is_sent_or_heard():
    a, b, wire, got = _pair("tok", "tok")
    assert a.room == 1200 - 81
    a.send(MEMBERSHIP, "127.0.0.5:8888", b"[" + b"1," * ((a.room - 2) // 2) + b"1]")
    assert len(wire.sent[-1][0]) <= 1200
    sent = len(wire.sent)
    a.send(MEMBERSHIP, "127.0.0.5:8888", b"[" + b"1," * 700 + b"1]")  # a message that does not fit
    assert len(wire.sent) == sent and a.stats["oversize"] == 1
    # a correctly signed datagram over the limit is dropped unread
    head = b"BSW1m" + a.uuid + int(time.time() * 1e6).to_bytes(8, "big")
    big = b"[" + b"1," * 600 + b"1]"
    assert a.key is not None
    b.datagram_received(head + hmac.new(a.key, head + big, hashlib.sha256).digest() + big, ("127.0.0.9", 8888))
    assert len(got) == 0 and b.stats["refused"] == 1
