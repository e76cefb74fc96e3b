"""Real SWIM members in the test process: `beiran.peer.membership` over `beiran.peer.transport` on
their own UDP sockets (127.x.y.z addresses of a test's subnet), to join a real daemon's cluster
without starting a daemon per member. Each socket keeps every datagram it was sent, before any
check, so a test can look at sizes and contents as they arrived."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from functools import partial
from typing import Any

from beiran.peer.membership import Membership, SwimConfig
from beiran.peer.transport import DatagramTransport

LIMIT = 1200  # bytes of UDP payload a datagram may take (transport.py)
HEADER = 4 + 1 + 36 + 8 + 32  # magic, channel, sender, sequence, MAC (transport.py, with a token)


class RecordingTransport(DatagramTransport):
    """A member's socket that keeps every datagram it was sent, with its source address."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.got: list[tuple[str, bytes]] = []

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.got.append((f"{addr[0]}:{addr[1]}", data))
        super().datagram_received(data, addr)

    def messages(self, src: str, since: int = 0) -> list[Any]:
        """Membership messages from `src` (with a token's MAC), parsed."""
        return [json.loads(data[HEADER:]) for where, data in self.got[since:] if where == src and data[4:5] == b"m"]


class SwimPeer:
    def __init__(self, membership: Membership, sock: RecordingTransport) -> None:
        self.membership, self.sock = membership, sock
        self.id, self.addr = membership.id, membership.addr

    def stop(self) -> None:
        """Gone without a word, as a crashed process."""
        self.membership.stop()
        self.sock.close()


async def start_swim_peers(n: int, ips: list[str], token: str, **swim: Any) -> list[SwimPeer]:
    """`n` members on `ips` (one each), not started; `swim` overrides SwimConfig (the daemon's
    anti-entropy interval by default)."""
    loop = asyncio.get_running_loop()
    peers: list[SwimPeer] = []
    for i in range(n):
        mid, box = str(uuid.uuid4()), []

        def deliver(channel: bytes, sender: str, src: str, data: bytes, box: list[Membership] = box) -> None:
            if channel == b"m":
                box[0].on_message(src, data)
        _, sock = await loop.create_datagram_endpoint(
            lambda mid=mid, deliver=deliver: RecordingTransport(mid, token, lambda host: True, deliver),
            local_addr=(ips[i], 0))
        assert isinstance(sock, RecordingTransport)
        addr = "{}:{}".format(*sock.transport.get_extra_info("sockname")[:2])
        cfg = SwimConfig(**{"max_packet": sock.room, "sync_interval": 5.0, **swim})
        m = Membership(mid, addr, partial(sock.send, b"m"), loop, cfg, rng=random.Random(i))
        box.append(m)
        peers.append(SwimPeer(m, sock))
    return peers


def stop_all(peers: list[SwimPeer]) -> None:
    for p in peers:
        p.stop()
