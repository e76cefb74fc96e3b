"""Authenticated UDP datagrams for membership and the who-has directory.

Why UDP: SWIM sends one small probe per node per interval and gossips on top of it; a datagram per
message (as memberlist does, on the daemon's own port number) costs no connection per peer.

Each datagram: magic, channel, the sender's UUID, a sequence number that is also its send time (in
microseconds), then with a cluster token an HMAC-SHA256 over all of it (key derived from the
token), then the payload. With a token, a datagram is taken only when its MAC is right, its time
is within WINDOW of ours, and its sequence number was not seen from that sender before (replays of
captured datagrams are dropped). Without a token peers are not authenticated at all (as the rest of
the peer protocol, beiran/peer/auth.py): the UUID is only a claim.

Every datagram, header and MAC included, is at most MAX_DATAGRAM bytes, sent and received: under
the 1280-byte minimum path MTU of IPv6 (less its headers), so no message relies on IP fragmentation
(a lost fragment loses the datagram, and fragments are what middleboxes drop first). Larger things,
a full member list, go as several datagrams. A bigger incoming datagram is dropped unread.

Every datagram is also checked against the source address: only addresses `allowed` (peer_cidrs,
or addresses the operator named) are heard from or sent to, so a forged source address cannot turn
this node into a reflector and gossip cannot make it send anywhere its config does not allow.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
import uuid as uuidlib
from collections.abc import Callable
from typing import Any, cast

from beiran.wire_numbers import port_number

log = logging.getLogger("beiran.peer")
MAGIC = b"BSW1"
MEMBERSHIP, DIRECTORY = b"m", b"d"
_ID = 36
_HEAD = len(MAGIC) + 1 + _ID + 8
_MAC = 32
MAX_DATAGRAM = 1200  # bytes of UDP payload, as memberlist keeps its UDP messages small
WINDOW = 30.0  # seconds of clock difference (and of replay memory) accepted
REPLAY_KEEP = 256  # sequence numbers remembered per sender above its floor
MAX_SENDERS = 20_000

Deliver = Callable[[bytes, str, str, bytes], None]  # (channel, sender uuid, "ip:port", payload)


def split_addr(addr: str) -> tuple[str, int] | None:
    """'10.0.0.2:8888' / '[fd00::2]:8888' -> (host, port); None when it is not that shape."""
    host, sep, port_text = addr.rpartition(":")
    port = port_number(port_text) if sep else None
    if port is None:
        return None
    return host.strip("[]"), port


def join_addr(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Replay:
    """Sequence numbers seen from one sender: a floor and the numbers above it (bounded)."""

    __slots__ = ("floor", "newest", "seen")

    def __init__(self) -> None:
        self.floor = 0
        self.newest = 0
        self.seen: set[int] = set()

    def fresh(self, seq: int, oldest: int = 0) -> bool:
        """`oldest`: the first sequence number the clock window still takes; older ones need no
        remembering (the window refuses them), so a sender's memory is what it sent within it."""
        if seq <= self.floor or seq in self.seen:
            return False
        self.seen.add(seq)
        self.newest = max(self.newest, seq)
        if len(self.seen) > REPLAY_KEEP:
            ordered = sorted(self.seen)
            cut = len(ordered) - REPLAY_KEEP // 2
            self.floor = ordered[cut - 1]
            self.seen = set(ordered[cut:])
        elif len(self.seen) > REPLAY_KEEP // 16 and oldest > self.floor:
            self.floor = oldest
            self.seen = {s for s in self.seen if s > oldest}
        return True


class DatagramTransport(asyncio.DatagramProtocol):
    def __init__(self, node_uuid: str, token: str | None, allowed: Callable[[str], bool], deliver: Deliver) -> None:
        self.uuid = node_uuid.encode()
        self.key = hmac.new(token.encode(), b"beiran swim v1", hashlib.sha256).digest() if token else None
        self.allowed, self.deliver = allowed, deliver
        #: payload bytes one datagram carries: what every message must fit in
        self.room = MAX_DATAGRAM - _HEAD - (_MAC if self.key else 0)
        self.transport: asyncio.DatagramTransport | None = None
        self._replay: dict[bytes, _Replay] = {}
        self._swept = time.monotonic()
        self._last_seq = 0
        self.stats = {"sent": 0, "received": 0, "bytes_sent": 0, "bytes_received": 0, "refused": 0,
                      "oversize": 0}

    # -- asyncio -----------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def error_received(self, exc: Exception) -> None:
        log.debug("membership datagram error: %s", exc)  # e.g. ICMP port unreachable: a peer is down

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    def _forget_quiet(self, oldest: int) -> None:
        """Once per WINDOW: forget the senders that sent nothing the clock window still takes
        (none of theirs can be replayed now), so made-up senders cost memory for WINDOW at most
        and a long-running node does not keep every member it ever heard from."""
        if time.monotonic() - self._swept < WINDOW:
            return
        self._swept = time.monotonic()
        for raw_id in [k for k, r in self._replay.items() if r.newest <= oldest]:
            del self._replay[raw_id]

    # -- sending -----------------------------------------------------------------------------------
    def send(self, channel: bytes, addr: str, payload: bytes) -> None:
        if len(payload) > self.room:  # a message that does not fit is a bug: say so, send nothing
            self.stats["oversize"] += 1
            log.warning("membership datagram to %s not sent: %d bytes of payload, room for %d",
                        addr, len(payload), self.room)
            return
        where = split_addr(addr)
        if self.transport is None or where is None or not self.allowed(where[0]):
            self.stats["refused"] += 1
            return
        seq = max(self._last_seq + 1, int(time.time() * 1e6))
        self._last_seq = seq
        head = MAGIC + channel + self.uuid + seq.to_bytes(8, "big")
        mac = hmac.new(self.key, head + payload, hashlib.sha256).digest() if self.key else b""
        data = head + mac + payload
        try:
            self.transport.sendto(data, where)
        except OSError as exc:
            log.debug("membership datagram to %s: %s", addr, exc)
            return
        self.stats["sent"] += 1
        self.stats["bytes_sent"] += len(data)

    # -- receiving ---------------------------------------------------------------------------------
    def datagram_received(self, data: bytes, addr: Any) -> None:
        host, port = str(addr[0]), int(addr[1])
        got = self.open(data, host)
        if got is None:
            self.stats["refused"] += 1
            return
        self.stats["received"] += 1
        self.stats["bytes_received"] += len(data)
        channel, sender, payload = got
        self.deliver(channel, sender, join_addr(host, port), payload)

    def open(self, data: bytes, host: str) -> tuple[bytes, str, bytes] | None:
        """(channel, sender uuid, payload) of a datagram that passes every check, else None."""
        mac_len = _MAC if self.key else 0
        if (len(data) < _HEAD + mac_len or len(data) > MAX_DATAGRAM
                or not data.startswith(MAGIC) or not self.allowed(host)):
            return None
        head, mac, payload = data[:_HEAD], data[_HEAD:_HEAD + mac_len], data[_HEAD + mac_len:]
        channel, raw_id = head[4:5], head[5:5 + _ID]
        if channel not in (MEMBERSHIP, DIRECTORY) or raw_id == self.uuid:
            return None
        try:
            sender = str(uuidlib.UUID(raw_id.decode("ascii")))
        except (ValueError, UnicodeDecodeError):
            return None
        if sender.encode() != raw_id:
            return None
        if self.key is not None:
            want = hmac.new(self.key, head + payload, hashlib.sha256).digest()
            if not hmac.compare_digest(want, mac):
                return None
            seq, now = int.from_bytes(head[5 + _ID:], "big"), time.time()
            if abs(seq / 1e6 - now) > WINDOW:
                return None
            oldest = int((now - WINDOW) * 1e6)
            replay = self._replay.get(raw_id)
            if replay is None:
                self._forget_quiet(oldest)
                if len(self._replay) >= MAX_SENDERS:  # the oldest sender's memory goes (WINDOW still holds)
                    del self._replay[next(iter(self._replay))]
                replay = self._replay[raw_id] = _Replay()
            if not replay.fresh(seq, oldest):
                return None
        return channel, sender, payload
