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

This module is the state machine: the member table and what each piece of news does to it, joins,
anti-entropy and dissemination. The rest: settings (swim_config.py), member records
(swim_members.py), messages on the wire (swim_wire.py), probing (swim_probe.py), suspicion timers
(swim_suspicion.py), full lists sent in parts (swim_transfer.py), the piggy-back queue and
fingerprints (gossip.py).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from functools import reduce
from itertools import repeat
from operator import xor
from typing import Any

from beiran.peer.gossip import BroadcastQueue, Scheduler, TimerHandle, encode, hid, hinc, retransmit_limit
from beiran.peer.swim_config import SwimConfig
from beiran.peer.swim_members import ALIVE, DEAD, GONE, MAX_INC_JUMP, SUSPECT, Member, SharedStart, pick_live
from beiran.peer.swim_probe import Prober
from beiran.peer.swim_suspicion import Suspicions
from beiran.peer.swim_transfer import StateTransfers
from beiran.peer.swim_wire import ACK, GOSSIP, JOIN, NACK, PING, PING_REQ, STATE, SYNC, decode

__all__ = ["ALIVE", "DEAD", "GONE", "SUSPECT", "Member", "Membership", "SharedStart", "SwimConfig"]

Send = Callable[[str, bytes], None]
Listener = Callable[[str, str | None, str], None]  # (member id, old state or None, new state)


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
        self.prober = Prober(self)
        self._bq = BroadcastQueue()
        self._suspicions = Suspicions(sched, self.cfg, self._suspicion_expired)
        self._dead_q: deque[tuple[float, str]] = deque()
        self._timers: list[TimerHandle | None] = [None, None, None]
        self._joining: list[str] = []
        self._transfers = StateTransfers(send, sched, self.cfg)
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
        self._running = self._transfers.running = True
        c = self.cfg
        self._timers[0] = self.sched.call_later(self.rng.random() * c.probe_interval, self._probe_tick)
        self._timers[2] = self.sched.call_later(c.sync_interval * (0.5 + self.rng.random()), self._sync_tick)
        self._joining = [s for s in seeds or [] if s != self.addr]
        self._try_join()

    def stop(self) -> None:
        self._running = False
        for t in self._timers:
            if t is not None:
                t.cancel()
        self._suspicions.stop()
        self.prober.stop()
        self._transfers.stop()

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
        self.prober.reset_order(list(self._live))

    def _own(self, m: Member) -> Member:
        """This node's own copy of `m`, made before its first change (see `adopt`)."""
        if self._shared is not None and self._shared.get(m.id) is m:
            m = self.members[m.id] = Member(m.id, m.addr, m.inc, m.state, m.since)
        return m

    # -- incoming ---------------------------------------------------------------------------------
    def on_message(self, src: str, data: bytes) -> None:
        if not self._running:
            return
        if len(data) > self.cfg.max_packet:
            self.stats["bad"] += 1
            return
        try:
            msg = decode(data, self.cfg.max_updates)
            kind = msg.kind
            if kind == PING:
                self._merge(msg.updates)
                if msg.target == self.id:  # a ping meant for an earlier process at this address is not ours
                    self.send_msg(src, [ACK, msg.seq, []])
            elif kind == ACK:
                self._merge(msg.updates)
                self.prober.on_ack(msg.seq)
            elif kind == NACK:
                self.prober.on_nack(msg.seq)
            elif kind == PING_REQ:
                self.prober.relay(src, msg.seq, msg.target, msg.addr)
            elif kind == GOSSIP:
                self._merge(msg.updates)
            elif kind == JOIN:
                self._merge(msg.updates)
                self._send_state(src)
            elif kind == STATE:
                self._joining = []
                self._merge(msg.updates, quiet=True)
            elif kind == SYNC and msg.fingerprint != self.sync_fp:
                self.stats["sync"] += 1
                self._send_state(src)
                if msg.reply:
                    self.send_msg(src, [SYNC, self.sync_fp, 0], gossip=False)
        except (ValueError, TypeError, IndexError, KeyError, AttributeError):  # UnicodeError too
            self.stats["bad"] += 1

    def _merge(self, updates: list[Any], quiet: bool = False) -> None:
        """Apply checked updates (swim_wire.decode checked them). An update that raises a member's
        incarnation further than MAX_INC_JUMP above what this node knows is dropped (alone): only
        the member raises its own, one refutation at a time, and a claim near MAX_INC would leave
        it no incarnation to refute a lie with."""
        members = self.members
        for kind, mid, inc, extra in updates:
            known = members.get(mid)
            if inc > (known.inc if known is not None else 0) + MAX_INC_JUMP:
                self.stats["bad"] += 1
                continue
            if kind == "a":
                self._alive(mid, inc, extra, quiet)
            elif kind == "s":
                self._suspect(mid, inc, extra, quiet)
            else:
                self._dead(mid, inc, extra, quiet)

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
            self.prober.add(mid)
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
            # Lifeguard: each independent suspicion shortens the wait
            if self._suspicions.confirm(mid, frm) and not quiet:
                self._queue(["s", mid, inc, frm], key=f"{mid}|{frm}")
            return
        m = self._own(m)
        self._set_inc(m, inc)
        self._set_state(m, SUSPECT, m.state)
        self.stats["suspect"] += 1
        self._suspicions.start(mid, inc, frm, len(self.live_ids()))
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
        self.health(+1)  # being suspected hints that this node is the slow one
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
        if new != SUSPECT:
            self._suspicions.cancel(m.id)
        if new == DEAD:
            self.stats["dead"] += 1
            self._dead_q.append((m.since, m.id))
        for cb in self._listeners:
            cb(m.id, old, new)

    def _suspicion_expired(self, mid: str, inc: int) -> None:
        m = self.members.get(mid)
        if m is not None and m.state == SUSPECT and m.inc == inc:
            self._dead(mid, inc, self.id, False)

    # -- probing (swim_probe.py judges; this node's table takes the verdict) ------------------------
    def health(self, delta: int) -> None:
        """Lifeguard's local health: evidence that this node is the slow one raises the score."""
        self.awareness = min(self.cfg.awareness_max - 1, max(0, self.awareness + delta))

    def probe_failed(self, mid: str) -> None:
        m = self.members.get(mid)
        if m is not None and m.state != DEAD:
            self._suspect(m.id, m.inc, self.id, False)  # a suspect already: our voice confirms it

    def pick_live(self, n: int, exclude: tuple[str, ...]) -> list[str]:
        return pick_live(self.live_ids(), n, exclude, self.rng)

    def _probe_tick(self) -> None:
        if not self._running:
            return
        scale = self.awareness + 1
        self._timers[0] = self.sched.call_later(self.cfg.probe_interval * scale, self._probe_tick)
        self._reap()
        if self._joining:
            self._try_join()
        self.prober.probe(scale)

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
            self.send_msg(seed, [JOIN, self.members[self.id].update()], gossip=False)

    def _send_state(self, dst: str) -> None:
        self._transfers.send(dst, lambda: (m.update() for m in self.members.values()))

    def _sync_tick(self) -> None:
        if not self._running:
            return
        self._timers[2] = self.sched.call_later(self.cfg.sync_interval * (0.5 + self.rng.random()), self._sync_tick)
        for other in self.pick_live(1, (self.id,)):
            self.send_msg(self.members[other].addr, [SYNC, self.sync_fp, 1], gossip=False)

    # -- dissemination ---------------------------------------------------------------------------------
    def _queue(self, update: list[Any], key: str | None = None) -> None:
        self._bq.put(update, key)
        if self._timers[1] is None and self._running:  # gossip rounds run only while there is news
            self._timers[1] = self.sched.call_later(0.0, self._gossip_tick)

    def _take_updates(self, room: int) -> list[Any]:
        if not self._bq:
            return []
        return self._bq.take(room, retransmit_limit(self.cfg.retransmit_mult, len(self.live_ids())))

    def send_msg(self, addr: str, msg: list[Any], gossip: bool = True) -> None:
        """Send `msg`, its last element (a list of updates) filled with queued news when `gossip`,
        up to `max_packet` bytes in all."""
        data = encode(msg)
        if gossip and self._bq:
            news = self._take_updates(self.cfg.max_packet - len(data))
            if news:
                msg[-1].extend(news)
                data = encode(msg)
        self._send(addr, data)

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
            self.send_msg(m.addr, [GOSSIP, ups], gossip=False)
