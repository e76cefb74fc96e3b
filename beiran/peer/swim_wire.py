"""SWIM's messages as they travel: one JSON array per datagram, its first element the kind.

Why a module of its own: a peer's message is untrusted, so every field is checked here (types,
lengths, ranges, how many updates) before the state machine sees any of it, and a message that
fails any check is dropped whole rather than half applied.

    [p, seq, target id, updates]       ping (the target answers only if it is that id)
    [k, seq, updates]                  ack
    [n, seq]                           nack from a relay: it is alive, the target did not answer
    [r, seq, target id, target addr]   ping-req: probe the target for me
    [g, updates]                       gossip
    [j, update]                        join: the joiner's own alive update
    [y, updates]                       full state, a part of it per message
    [h, fingerprint, reply wanted]     anti-entropy: compare views

An update is [letter, member id, incarnation, address] (alive) or [letter, member id,
incarnation, id of the member that says so] (suspect, dead).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, NamedTuple

from beiran.peer.gossip import encode
from beiran.peer.swim_members import MAX_ADDR, MAX_ID, MAX_INC

PING, ACK, NACK, PING_REQ, GOSSIP, JOIN, STATE, SYNC = "p", "k", "n", "r", "g", "j", "y", "h"
UPDATE_KINDS = frozenset("asd")


class Message(NamedTuple):
    kind: str
    seq: int = 0
    target: str = ""
    addr: str = ""
    updates: list[list[Any]] = []  # read only: shared by messages that carry none
    fingerprint: int = 0
    reply: bool = False


def decode(data: bytes, max_updates: int) -> Message:
    """The message in `data`, every field checked; ValueError when anything is malformed."""
    try:
        msg = json.loads(data.decode())
        kind = msg[0]
        if kind == PING:
            return Message(kind, seq=_int(msg[1]), target=_str(msg[2], MAX_ID), updates=_updates(msg[3], max_updates))
        if kind == ACK:
            return Message(kind, seq=_int(msg[1]), updates=_updates(msg[2], max_updates))
        if kind == NACK:
            return Message(kind, seq=_int(msg[1]))
        if kind == PING_REQ:
            return Message(kind, seq=_int(msg[1]), target=_str(msg[2], MAX_ID), addr=_str(msg[3], MAX_ADDR))
        if kind in (GOSSIP, STATE):
            return Message(kind, updates=_updates(msg[1], max_updates))
        if kind == JOIN:
            return Message(kind, updates=_updates([msg[1]], 1))
        if kind == SYNC:
            return Message(kind, fingerprint=_int(msg[1]), reply=bool(msg[2]))
    except (TypeError, IndexError, KeyError, AttributeError) as exc:
        raise ValueError(f"malformed membership message: {exc}") from None
    raise ValueError(f"unknown membership message kind {kind!r}")


def state_parts(updates: Iterable[list[Any]], room: int) -> list[bytes]:
    """A full member list as [y, updates] messages of at most `room` bytes each."""
    parts: list[bytes] = []
    part: list[bytes] = []
    size = 7  # '["y",[' and ']]', less the comma the first update does not need
    for u in updates:
        e = encode(u)
        if part and size + len(e) + 1 > room:
            parts.append(b'["y",[' + b",".join(part) + b"]]")
            part, size = [], 7
        part.append(e)
        size += len(e) + 1
    if part:
        parts.append(b'["y",[' + b",".join(part) + b"]]")
    return parts


def _int(v: Any) -> int:
    if type(v) is not int:
        raise ValueError("not an integer")
    return v


def _str(v: Any, limit: int) -> str:
    if not isinstance(v, str) or len(v) > limit:
        raise ValueError("not a short string")
    return v


def _updates(updates: Any, limit: int) -> list[list[Any]]:
    if not isinstance(updates, list) or len(updates) > limit:
        raise ValueError("updates")
    for u in updates:
        if not isinstance(u, list) or len(u) != 4:
            raise ValueError("update")
        kind, mid, inc, extra = u
        if (kind not in UPDATE_KINDS or not isinstance(mid, str) or not isinstance(extra, str)
                or len(mid) > MAX_ID or len(extra) > MAX_ADDR or type(inc) is not int
                or not 0 <= inc < MAX_INC):
            raise ValueError("update")
    return updates
