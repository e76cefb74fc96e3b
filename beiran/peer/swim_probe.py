"""SWIM's failure detector: one probe per interval, indirect probes through others when the direct
ack is late, and the relaying this node does for others' indirect probes.

Why separate from the member table: this is where time and loss are judged (which target next,
how long to wait, who to ask), while membership.py decides what a verdict does to the table.
"""

from __future__ import annotations

from itertools import count
from typing import TYPE_CHECKING

from beiran.peer.gossip import TimerHandle
from beiran.peer.swim_members import DEAD, SUSPECT, Member
from beiran.peer.swim_wire import ACK, NACK, PING, PING_REQ

if TYPE_CHECKING:
    from beiran.peer.membership import Membership

MAX_RELAYS = 256  # indirect probes relayed for others at once


class _Probe:
    __slots__ = ("deadline", "expected_nacks", "nacks", "target", "timers")

    def __init__(self, target: str, deadline: float) -> None:
        self.target, self.deadline = target, deadline
        self.expected_nacks = self.nacks = 0
        self.timers: list[TimerHandle] = []


class Prober:
    """The probes of one node (`node`, whose table, clock, randomness and sending it uses)."""

    def __init__(self, node: Membership) -> None:
        self.node = node
        self._seq = count(1)
        self._probes: dict[int, _Probe] = {}
        self._relays: dict[int, tuple[str, int]] = {}  # our ping seq -> (requester addr, its seq)
        self._order: list[str] = []
        self._pos = 0

    # -- probe order -------------------------------------------------------------------------------
    def reset_order(self, ids: list[str]) -> None:
        self._order, self._pos = ids, 0

    def add(self, mid: str) -> None:
        """A new member joins the current round at a random place."""
        self._order.insert(self.node.rng.randint(0, len(self._order)), mid)

    def _next_target(self) -> Member | None:
        """Round-robin over a random order (SWIM's bounded detection time). The order is drawn one
        step at a time (a Fisher-Yates shuffle spread over the round): O(1) per probe, not O(N)."""
        node = self.node
        rand = node.rng.random
        for _ in range(2):
            order = self._order
            while self._pos < len(order):
                pos = self._pos
                j = pos + int(rand() * (len(order) - pos))
                order[pos], order[j] = order[j], order[pos]
                self._pos = pos + 1
                m = node.members.get(order[pos])
                if m is not None and m.state != DEAD and m.id != node.id:
                    return m
            self._order = [i for i in node.live_ids() if i != node.id]
            self._pos = 0
        return None

    # -- probing -----------------------------------------------------------------------------------
    def probe(self, scale: int) -> None:
        """Probe the next member; `scale` stretches every wait (Lifeguard's local health)."""
        node = self.node
        m = self._next_target()
        if m is None:
            return
        seq = next(self._seq)
        p = self._probes[seq] = _Probe(m.id, node.sched.time() + node.cfg.probe_interval * scale * 0.95)
        # one timer per probe; the failure timer is armed only if the direct ack is late
        p.timers.append(node.sched.call_later(node.cfg.probe_timeout * scale, self._indirect, seq))
        first = [m.update()] if m.state == SUSPECT else []  # buddy system: tell it it is suspected
        node.send_msg(m.addr, [PING, seq, m.id, first])

    def _indirect(self, seq: int) -> None:
        node = self.node
        p = self._probes.get(seq)
        if p is None:
            return
        p.timers.append(node.sched.call_later(max(0.0, p.deadline - node.sched.time()), self._failed, seq))
        m = node.members.get(p.target)
        if m is None:
            return
        for relay in node.pick_live(node.cfg.indirect_checks, (node.id, m.id)):
            node.send_msg(node.members[relay].addr, [PING_REQ, seq, m.id, m.addr], gossip=False)
            p.expected_nacks += 1

    def _failed(self, seq: int) -> None:
        p = self._probes.pop(seq, None)
        if p is None:
            return
        p.timers[0].cancel()
        # Lifeguard: relays that did not even nack point at this node's own network or CPU
        self.node.health(p.expected_nacks - p.nacks if p.expected_nacks else 1)
        self.node.probe_failed(p.target)

    def on_ack(self, seq: int) -> None:
        p = self._probes.pop(seq, None)
        if p is not None:
            for t in p.timers:
                t.cancel()
            self.node.health(-1)
            return
        relay = self._relays.pop(seq, None)
        if relay is not None:
            self.node.send_msg(relay[0], [ACK, relay[1], []], gossip=False)

    def on_nack(self, seq: int) -> None:
        p = self._probes.get(seq)
        if p is not None:
            p.nacks += 1

    # -- relaying for others -------------------------------------------------------------------------
    def relay(self, src: str, their_seq: int, target: str, addr: str) -> None:
        node = self.node
        m = node.members.get(target)
        if m is None or m.addr != addr or len(self._relays) >= MAX_RELAYS:
            return  # only members this node knows, at the address it knows, a bounded number at once
        seq = next(self._seq)
        self._relays[seq] = (src, their_seq)
        node.send_msg(addr, [PING, seq, target, []], gossip=False)
        node.sched.call_later(node.cfg.probe_timeout, self._relay_timeout, seq)

    def _relay_timeout(self, seq: int) -> None:
        relay = self._relays.pop(seq, None)
        if relay is not None:
            self.node.send_msg(relay[0], [NACK, relay[1]], gossip=False)

    def stop(self) -> None:
        for p in self._probes.values():
            for t in p.timers:
                t.cancel()
        self._probes.clear()
