"""Cluster membership and failure detection: SWIM (Das, Gupta, Motivala 2002) with the Lifeguard
extensions (Dadgar et al. 2017), written from the papers.

Why this shape: a full mesh costs every node a connection and a heartbeat per peer; SWIM costs a
node one probe per interval whatever the cluster size, and spreads news by piggy-backing it on those
probes (plus short gossip bursts while there is news). Lifeguard keeps a slow or overloaded node
from declaring healthy ones dead: it stretches its own timeouts (local health), suspicion timeouts
shrink only as independent members confirm, and a suspected member is told at once (buddy system).

Transport-agnostic: messages leave through `send(addr, bytes)` and arrive via `on_message(addr,
bytes)`; time comes from an injected scheduler with `time()` and `call_later()` (an asyncio loop
is one), so the same code runs on real links and inside the discrete-event simulator.
"""

from __future__ import annotations

import json
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import reduce
from itertools import count, repeat
from operator import xor
from typing import Any

from beiran.peer.gossip import (
    BroadcastQueue,
    Scheduler,
    TimerHandle,
    encode,
    hid,
    hinc,
    retransmit_limit,
    suspicion_timeout,
)

ALIVE, SUSPECT, DEAD = "alive", "suspect", "dead"
GONE = "gone"  # a dead record forgotten after `dead_keep`: listeners free what they kept for it
MAX_ID, MAX_ADDR, MAX_INC = 64, 128, 1 << 53
MAX_RELAYS = 256  # indirect probes relayed for others at once


Send = Callable[[str, bytes], None]
Listener = Callable[[str, str | None, str], None]  # (member id, old state or None, new state)


@dataclass
class SwimConfig:
    probe_interval: float = 0.5  # one probe per node per interval, whatever the cluster size
    probe_timeout: float = 0.2  # direct ack wait before asking `indirect_checks` others
    indirect_checks: int = 3
    gossip_interval: float = 0.2  # gossip rounds run only while there is news to spread
    gossip_nodes: int = 3
    retransmit_mult: int = 4  # each update is sent retransmit_mult * max(2, ceil(log10(n + 1))) times
    suspicion_mult: float = 2.0  # min suspicion timeout = mult * log10(n) * probe_interval
    suspicion_max_mult: float = 6.0  # max = max_mult * min, shrinking with confirmations
    suspicion_confirmations: int = 3  # independent suspicions that bring the timeout to its min
    awareness_max: int = 8  # Lifeguard local health: timeouts scale by (score + 1)
    dead_keep: float = 60.0  # dead records kept (so stale alive gossip cannot revive them)
    sync_interval: float = 30.0  # anti-entropy: compare view fingerprints with one random member
    sync_chunk: int = 100  # members per full-state message
    max_packet: int = 1400  # piggy-backed gossip fills a message up to this many bytes
    max_message: int = 64 << 10  # larger incoming messages are dropped unread
    max_members: int = 20_000  # a peer's gossip cannot grow the member table past this


class Member:
    __slots__ = ("addr", "id", "inc", "since", "state")

    def __init__(self, mid: str, addr: str, inc: int, state: str, since: float) -> None:
        self.id, self.addr, self.inc, self.state, self.since = mid, addr, inc, state, since

    def update(self) -> list[Any]:
        return [_LETTER[self.state], self.id, self.inc, self.addr]


_LETTER = {ALIVE: "a", SUSPECT: "s", DEAD: "d"}


class SharedStart:
    """A member list (all alive, incarnation 0) that many nodes in one process start from, as the
    simulator's thousands do: each node copies the table but shares the `Member` objects until it
    changes one (copy on write), so N nodes hold N tables of references rather than N x N members."""

    def __init__(self, members: list[tuple[str, str]], now: float) -> None:
        self.members: dict[str, Member] = {}
        for mid, addr in members:
            if mid not in self.members:
                self.members[mid] = Member(mid, addr, 0, ALIVE, now)
        self.ids = list(self.members)
        self.view_fp = reduce(xor, map(hid, self.ids), 0)
        self.sync_fp = reduce(xor, map(hinc, self.ids, repeat(0)), 0)


class _Suspicion:
    __slots__ = ("confirmers", "handle", "k", "max", "min", "start")
    confirmers: set[str]
    handle: TimerHandle | None
    k: int
    max: float
    min: float
    start: float


class _Probe:
    __slots__ = ("deadline", "expected_nacks", "nacks", "target", "timers")
    deadline: float
    expected_nacks: int
    nacks: int
    target: str
    timers: list[TimerHandle]


class Membership:
    """One node's view of the cluster: every member with its state, kept current by SWIM."""

    def __init__(self, node_id: str, addr: str, send: Send, sched: Scheduler, config: SwimConfig | None = None,
                 *, rng: random.Random | None = None, addr_ok: Callable[[str], bool] | None = None) -> None:
        self.id, self.addr = node_id, addr
        self.cfg = config or SwimConfig()
        self._send, self.sched = send, sched
        self.rng = rng or random.Random()
        self.addr_ok = addr_ok or (lambda a: True)  # the daemon passes its configured networks
        self.inc = 0
        self.awareness = 0
        self.members: dict[str, Member] = {node_id: Member(node_id, addr, 0, ALIVE, sched.time())}
        self.view_fp = hid(node_id)  # XOR over live member ids: a cache key for rankings
        self.sync_fp = hinc(node_id, 0)  # XOR over live (id, incarnation): anti-entropy check
        self._live: list[str] | None = None
        self._shared: dict[str, Member] | None = None  # adopted members, copied before a change
        self._listeners: list[Listener] = []
        self._seq = count(1)
        self._probes: dict[int, _Probe] = {}
        self._relays: dict[int, tuple[str, int]] = {}  # our ping seq -> (requester addr, its seq)
        self._probe_list: list[str] = []
        self._probe_pos = 0
        self._bq = BroadcastQueue()
        self._suspicions: dict[str, _Suspicion] = {}
        self._dead_q: deque[tuple[float, str]] = deque()
        self._timers: list[TimerHandle | None] = [None, None, None]
        self._joining: list[str] = []
        self._running = self.leaving = False
        self.stats = {"suspect": 0, "refute": 0, "dead": 0, "bad": 0, "sync": 0}

    # -- public ----------------------------------------------------------------------------------
    def on_change(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def live_ids(self) -> list[str]:
        """Ids of members not declared dead (alive or suspect), this node included: what ranks."""
        if self._live is None:
            self._live = [m.id for m in self.members.values() if m.state != DEAD]
        return self._live

    def state(self, mid: str) -> str | None:
        m = self.members.get(mid)
        return m.state if m else None

    def start(self, seeds: list[str] | None = None) -> None:
        """Begin probing; with seeds, join through the first that answers."""
        self._running = True
        c = self.cfg
        self._timers[0] = self.sched.call_later(self.rng.random() * c.probe_interval, self._probe_tick)
        self._timers[2] = self.sched.call_later(c.sync_interval * (0.5 + self.rng.random()), self._sync_tick)
        self._joining = [s for s in seeds or [] if s != self.addr]
        self._try_join()

    def stop(self) -> None:
        self._running = False
        for t in [*self._timers, *(s.handle for s in self._suspicions.values())]:
            if t is not None:
                t.cancel()
        for p in self._probes.values():
            for t in p.timers:
                t.cancel()
        self._probes.clear()

    def leave(self) -> None:
        """Tell the cluster this node is going (a dead record from itself), then keep gossiping."""
        self.leaving = True
        self._queue(["d", self.id, self.inc, self.id])
        if self._running:  # one round now: a daemon that stops right after still said so
            if self._timers[1] is not None:
                self._timers[1].cancel()
            self._gossip_tick()

    def join(self, seeds: list[str]) -> None:
        """Join (again) through more seeds, e.g. a peer that discovery found after the start."""
        self._joining.extend(s for s in seeds if s != self.addr and s not in self._joining)
        self._try_join()

    def bootstrap(self, members: list[tuple[str, str]]) -> None:
        """Start from a known member list (all alive, incarnation 0), as a finished join leaves it."""
        now, table, new = self.sched.time(), self.members, []
        for mid, addr in members:
            if mid not in table:
                table[mid] = Member(mid, addr, 0, ALIVE, now)
                new.append(mid)
        self.view_fp = reduce(xor, map(hid, new), self.view_fp)  # N members, N nodes: no per-id Python step
        self.sync_fp = reduce(xor, map(hinc, new, repeat(0)), self.sync_fp)
        self._live = None

    def adopt(self, start: SharedStart) -> None:
        """`bootstrap` for many nodes in one process: the same view, its members shared with the
        other nodes until this one changes them. Only on a fresh node."""
        if len(self.members) != 1 or self._running:
            raise RuntimeError("adopt() is for a node that knows no one yet")
        own = self.members[self.id]
        fresh = self.id not in start.members
        self.members = dict(start.members)
        self.members[self.id] = own
        self._shared = start.members
        # the start's fingerprints count this node at incarnation 0 already, as a fresh node does
        self.view_fp = start.view_fp ^ (self.view_fp if fresh else 0)
        self.sync_fp = start.sync_fp ^ (self.sync_fp if fresh else 0)
        self._live = [*start.ids, self.id] if fresh else list(start.ids)
        self._probe_list, self._probe_pos = list(self._live), 0

    def _own(self, m: Member) -> Member:
        """This node's own copy of `m`, made before its first change (see `adopt`)."""
        if self._shared is not None and self._shared.get(m.id) is m:
            m = self.members[m.id] = Member(m.id, m.addr, m.inc, m.state, m.since)
        return m

    # -- incoming ---------------------------------------------------------------------------------
    def on_message(self, src: str, data: bytes) -> None:
        if not self._running:
            return
        if len(data) > self.cfg.max_message:
            self.stats["bad"] += 1
            return
        try:
            msg = json.loads(data.decode())
            kind = msg[0]
            if kind == "p":  # ping: [p, seq, target id, updates]
                self._merge(msg[3])
                if msg[2] == self.id:  # a ping meant for an earlier process at this address is not ours
                    self._send_msg(src, ["k", int(msg[1]), []])
            elif kind == "k":  # ack: [k, seq, updates]
                self._merge(msg[2])
                self._on_ack(int(msg[1]))
            elif kind == "n":  # nack from a relay: [n, seq]
                p = self._probes.get(int(msg[1]))
                if p is not None:
                    p.nacks += 1
            elif kind == "r":  # ping-req: [r, seq, target id, target addr]
                self._relay(src, int(msg[1]), str(msg[2]), str(msg[3]))
            elif kind == "g":  # gossip: [g, updates]
                self._merge(msg[1])
            elif kind == "j":  # join: [j, alive update of the joiner]
                self._merge([msg[1]])
                self._send_state(src)
            elif kind == "y":  # full state: [y, updates]
                self._joining = []
                self._merge(msg[1], quiet=True)
            elif kind == "h":  # anti-entropy: [h, fingerprint, reply wanted]
                if int(msg[1]) != self.sync_fp:
                    self.stats["sync"] += 1
                    self._send_state(src)
                    if msg[2]:
                        self._send_msg(src, ["h", self.sync_fp, 0], gossip=False)
            else:
                raise ValueError(kind)
        except (ValueError, TypeError, IndexError, KeyError, AttributeError):  # UnicodeError too
            self.stats["bad"] += 1

    def _merge(self, updates: list[Any], quiet: bool = False) -> None:
        if not isinstance(updates, list) or len(updates) > 4 * self.cfg.sync_chunk:
            raise ValueError("updates")
        for u in updates:
            kind, mid, inc, extra = u
            if (not isinstance(mid, str) or not isinstance(extra, str) or len(mid) > MAX_ID
                    or len(extra) > MAX_ADDR or type(inc) is not int or not 0 <= inc < MAX_INC):
                raise ValueError("update")
            if kind == "a":
                self._alive(mid, inc, extra, quiet)
            elif kind == "s":
                self._suspect(mid, inc, extra, quiet)
            elif kind == "d":
                self._dead(mid, inc, extra, quiet)
            else:
                raise ValueError("update kind")

    # -- state changes (SWIM's precedence: higher incarnation wins; at equal, dead > suspect > alive)
    def _alive(self, mid: str, inc: int, addr: str, quiet: bool) -> None:
        if mid == self.id:
            if inc > self.inc and not self.leaving:
                self._refute(inc)  # an old incarnation of this node is remembered: outbid it
            return
        m = self.members.get(mid)
        if m is None:
            if len(self.members) >= self.cfg.max_members or not self.addr_ok(addr):
                return
            m = self.members[mid] = Member(mid, addr, inc, DEAD, self.sched.time())
            self._set_state(m, ALIVE, None)
            self._probe_list.insert(self.rng.randint(0, len(self._probe_list)), mid)
        elif inc > m.inc:
            if addr != m.addr and not self.addr_ok(addr):
                return
            m = self._own(m)
            m.addr = addr
            self._set_inc(m, inc)
            self._set_state(m, ALIVE, m.state)
        else:
            return
        if not quiet:
            self._queue(["a", mid, inc, addr])

    def _accusable(self, mid: str, inc: int) -> Member | None:
        """The member a suspect/dead rumour at `inc` applies to, if any; a rumour about this node
        is refuted instead."""
        if mid == self.id:
            self._accused(inc)
            return None
        m = self.members.get(mid)
        if m is None or inc < m.inc or m.state == DEAD:
            return None
        return m

    def _suspect(self, mid: str, inc: int, frm: str, quiet: bool) -> None:
        m = self._accusable(mid, inc)
        if m is None:
            return
        if m.state == SUSPECT and inc == m.inc:
            s = self._suspicions.get(mid)
            if s is not None and frm not in s.confirmers and len(s.confirmers) <= s.k:
                s.confirmers.add(frm)  # Lifeguard: each independent suspicion shortens the wait
                self._arm_suspicion(m, s)
                if not quiet:
                    self._queue(["s", mid, inc, frm], key=f"{mid}|{frm}")
            return
        m = self._own(m)
        self._set_inc(m, inc)
        self._set_state(m, SUSPECT, m.state)
        self._start_suspicion(m, frm)
        if not quiet:
            self._queue(["s", mid, inc, frm])

    def _dead(self, mid: str, inc: int, frm: str, quiet: bool) -> None:
        m = self._accusable(mid, inc)
        if m is None:
            return
        m = self._own(m)
        self._set_inc(m, inc)
        self._set_state(m, DEAD, m.state)
        if not quiet:
            self._queue(["d", mid, inc, frm])

    def _accused(self, inc: int) -> None:
        """Someone suspects this node or holds it dead: outbid that incarnation. An accusation of an
        older incarnation means our refutation missed that node: say it again (it rides the ack)."""
        if self.leaving:
            return
        if inc >= self.inc:
            self._refute(inc)
        elif self.id not in self._bq:
            self._queue(["a", self.id, self.inc, self.addr])

    def _refute(self, inc: int) -> None:
        self.stats["refute"] += 1
        me = self.members[self.id]
        self.inc = max(self.inc, inc) + 1
        self._set_inc(me, self.inc)
        self._health(+1)  # being suspected hints that this node is the slow one
        self._queue(["a", self.id, self.inc, self.addr])

    def _set_inc(self, m: Member, inc: int) -> None:
        if m.state != DEAD:
            self.sync_fp ^= hinc(m.id, m.inc) ^ hinc(m.id, inc)
        m.inc = inc

    def _set_state(self, m: Member, new: str, old: str | None) -> None:
        if new == old:
            return
        was_live, is_live = old not in (None, DEAD), new != DEAD
        if was_live != is_live:
            self.view_fp ^= hid(m.id)
            self.sync_fp ^= hinc(m.id, m.inc)
            if self._live is not None:  # kept in step rather than rebuilt: N members, N nodes
                if is_live:
                    self._live.append(m.id)
                else:
                    self._live.remove(m.id)
        m.state, m.since = new, self.sched.time()
        if new != SUSPECT and m.id in self._suspicions:
            h = self._suspicions.pop(m.id).handle
            if h is not None:
                h.cancel()
        if new == DEAD:
            self.stats["dead"] += 1
            self._dead_q.append((m.since, m.id))
        for cb in self._listeners:
            cb(m.id, old, new)

    # -- suspicion ---------------------------------------------------------------------------------
    def _start_suspicion(self, m: Member, frm: str) -> None:
        self.stats["suspect"] += 1
        c, n = self.cfg, max(len(self.live_ids()), 1)
        s = _Suspicion()
        s.start, s.confirmers, s.handle = self.sched.time(), {frm}, None
        s.min = c.suspicion_mult * max(1.0, math.log10(n)) * c.probe_interval
        s.max = c.suspicion_max_mult * s.min
        s.k = max(0, min(c.suspicion_confirmations, n - 2))
        self._suspicions[m.id] = s
        self._arm_suspicion(m, s)

    def _arm_suspicion(self, m: Member, s: _Suspicion) -> None:
        timeout = suspicion_timeout(len(s.confirmers) - 1, s.k, s.min, s.max)
        if s.handle is not None:
            s.handle.cancel()
        left = max(0.0, s.start + timeout - self.sched.time())
        s.handle = self.sched.call_later(left, self._suspicion_expired, m.id, m.inc)

    def _suspicion_expired(self, mid: str, inc: int) -> None:
        m = self.members.get(mid)
        if m is not None and m.state == SUSPECT and m.inc == inc:
            self._suspicions.pop(mid, None)
            self._dead(mid, inc, self.id, False)

    # -- probing -------------------------------------------------------------------------------------
    def _health(self, delta: int) -> None:
        self.awareness = min(self.cfg.awareness_max - 1, max(0, self.awareness + delta))

    def _next_target(self) -> Member | None:
        """Round-robin over a random order (SWIM's bounded detection time). The order is drawn one
        step at a time (a Fisher-Yates shuffle spread over the round): O(1) per probe, not O(N)."""
        rand = self.rng.random
        for _ in range(2):
            order = self._probe_list
            while self._probe_pos < len(order):
                pos = self._probe_pos
                j = pos + int(rand() * (len(order) - pos))
                order[pos], order[j] = order[j], order[pos]
                self._probe_pos = pos + 1
                m = self.members.get(order[pos])
                if m is not None and m.state != DEAD and m.id != self.id:
                    return m
            self._probe_list = [i for i in self.live_ids() if i != self.id]
            self._probe_pos = 0
        return None

    def _pick_live(self, n: int, exclude: tuple[str, ...]) -> list[str]:
        """Up to `n` distinct random live members outside `exclude`, without copying the live list."""
        live = self.live_ids()
        if len(live) <= 4 * (n + len(exclude)):
            others = [i for i in live if i not in exclude]
            return self.rng.sample(others, min(n, len(others)))
        picks: list[str] = []
        rand = self.rng.random
        while len(picks) < n:
            i = live[int(rand() * len(live))]
            if i not in exclude and i not in picks:
                picks.append(i)
        return picks

    def _probe_tick(self) -> None:
        if not self._running:
            return
        scale = self.awareness + 1
        self._timers[0] = self.sched.call_later(self.cfg.probe_interval * scale, self._probe_tick)
        self._reap()
        if self._joining:
            self._try_join()
        m = self._next_target()
        if m is None:
            return
        seq = next(self._seq)
        p = self._probes[seq] = _Probe()
        p.target, p.expected_nacks, p.nacks = m.id, 0, 0
        p.deadline = self.sched.time() + self.cfg.probe_interval * scale * 0.95
        # one timer per probe; the failure timer is armed only if the direct ack is late
        p.timers = [self.sched.call_later(self.cfg.probe_timeout * scale, self._probe_indirect, seq)]
        first = [m.update()] if m.state == SUSPECT else []  # buddy system: tell it it is suspected
        self._send_msg(m.addr, ["p", seq, m.id, first])

    def _probe_indirect(self, seq: int) -> None:
        p = self._probes.get(seq)
        if p is None:
            return
        p.timers.append(self.sched.call_later(max(0.0, p.deadline - self.sched.time()), self._probe_failed, seq))
        m = self.members.get(p.target)
        if m is None:
            return
        for relay in self._pick_live(self.cfg.indirect_checks, (self.id, m.id)):
            self._send_msg(self.members[relay].addr, ["r", seq, m.id, m.addr], gossip=False)
            p.expected_nacks += 1

    def _probe_failed(self, seq: int) -> None:
        p = self._probes.pop(seq, None)
        if p is None:
            return
        p.timers[0].cancel()
        # Lifeguard: relays that did not even nack point at this node's own network or CPU
        self._health(p.expected_nacks - p.nacks if p.expected_nacks else 1)
        m = self.members.get(p.target)
        if m is not None and m.state != DEAD:
            self._suspect(m.id, m.inc, self.id, False)  # a suspect already: our voice confirms it

    def _on_ack(self, seq: int) -> None:
        p = self._probes.pop(seq, None)
        if p is not None:
            for t in p.timers:
                t.cancel()
            self._health(-1)
            return
        relay = self._relays.pop(seq, None)
        if relay is not None:
            self._send_msg(relay[0], ["k", relay[1], []], gossip=False)

    def _relay(self, src: str, their_seq: int, target: str, addr: str) -> None:
        m = self.members.get(target)
        if m is None or m.addr != addr or len(self._relays) >= MAX_RELAYS:
            return  # only members this node knows, at the address it knows, a bounded number at once
        seq = next(self._seq)
        self._relays[seq] = (src, their_seq)
        self._send_msg(addr, ["p", seq, target, []], gossip=False)
        self.sched.call_later(self.cfg.probe_timeout, self._relay_timeout, seq)

    def _relay_timeout(self, seq: int) -> None:
        relay = self._relays.pop(seq, None)
        if relay is not None:
            self._send_msg(relay[0], ["n", relay[1]], gossip=False)

    def _reap(self) -> None:
        horizon = self.sched.time() - self.cfg.dead_keep
        while self._dead_q and self._dead_q[0][0] < horizon:
            _, mid = self._dead_q.popleft()
            m = self.members.get(mid)
            if m is not None and m.state == DEAD and m.since < horizon:
                del self.members[mid]
                for cb in self._listeners:
                    cb(mid, DEAD, GONE)

    # -- join and anti-entropy -------------------------------------------------------------------------
    def _try_join(self) -> None:
        if self._joining:
            seed = self._joining.pop(0)
            self._joining.append(seed)
            self._send_msg(seed, ["j", self.members[self.id].update()], gossip=False)

    def _send_state(self, dst: str) -> None:
        ups = [m.update() for m in self.members.values()]
        for i in range(0, len(ups), self.cfg.sync_chunk):
            self._send_msg(dst, ["y", ups[i:i + self.cfg.sync_chunk]], gossip=False)

    def _sync_tick(self) -> None:
        if not self._running:
            return
        self._timers[2] = self.sched.call_later(self.cfg.sync_interval * (0.5 + self.rng.random()), self._sync_tick)
        for other in self._pick_live(1, (self.id,)):
            self._send_msg(self.members[other].addr, ["h", self.sync_fp, 1], gossip=False)

    # -- dissemination ---------------------------------------------------------------------------------
    def _queue(self, update: list[Any], key: str | None = None) -> None:
        self._bq.put(update, key)
        if self._timers[1] is None and self._running:  # gossip rounds run only while there is news
            self._timers[1] = self.sched.call_later(0.0, self._gossip_tick)

    def _take_updates(self, room: int) -> list[Any]:
        if not self._bq:
            return []
        return self._bq.take(room, retransmit_limit(self.cfg.retransmit_mult, len(self.live_ids())))

    def _send_msg(self, addr: str, msg: list[Any], gossip: bool = True) -> None:
        if gossip and self._bq:  # ping and ack headers are under 120 bytes
            msg[-1].extend(self._take_updates(self.cfg.max_packet - 120 - sum(len(u[1]) + 40 for u in msg[-1])))
        self._send(addr, encode(msg))

    def _gossip_tick(self) -> None:
        self._timers[1] = None
        if not self._running or not self._bq:
            return
        self._timers[1] = self.sched.call_later(self.cfg.gossip_interval, self._gossip_tick)
        targets = [m for m in self.members.values() if m.id != self.id and
                   (m.state != DEAD or self.sched.time() - m.since < 2.0)] if len(self.members) < 64 else None
        if targets is None:
            live = self.live_ids()
            picks = {live[self.rng.randrange(len(live))] for _ in range(self.cfg.gossip_nodes + 1)}
            targets = [self.members[i] for i in picks if i != self.id]
        for m in self.rng.sample(targets, min(self.cfg.gossip_nodes, len(targets))):
            ups = self._take_updates(self.cfg.max_packet - 8)
            if not ups:
                break
            self._send_msg(m.addr, ["g", ups], gossip=False)
