"""One-hop who-has directory for clusters too large for every node to hold every peer's holdings.

Why: a full copy of all holdings on every node grows with nodes x blobs; here the top-k nodes of a
digest by the rendezvous ranking (`placement.top`, the same order the fetcher uses) keep the list of
its holders, so a node stores about k/N of the cluster's (holder, blob) pairs, a lookup is one round
trip to those owners, and a membership change moves only the keys whose top-k changed. Holders
push additions and removals to the owners in batches (acknowledged, resent). A holder's entries
leave the answers the moment membership declares it dead (not by a TTL) and are freed when
membership forgets it, so a member wrongly declared dead that refutes keeps its listing.
A holder's claims are capped per owner.

Also the cold-blob owner chain: rank 1 fetches from the origin for everyone, rank 2 then 3 if it dies.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from itertools import count
from typing import Any, Protocol

from beiran.fetch import placement
from beiran.peer.gossip import Scheduler, TimerHandle, encode
from beiran.peer.membership import DEAD, GONE

Reply = Callable[[list[str]], None]


class View(Protocol):
    """What the directory needs of membership (a `Membership` is one)."""

    id: str
    view_fp: int

    def live_ids(self) -> list[str]: ...

    def state(self, mid: str) -> str | None: ...

    def on_change(self, listener: Callable[[str, str | None, str], None]) -> None: ...


class Ranker:
    """Top-k owners of a digest under a membership view, memoised per (digest, live set).

    The memo may be shared by nodes in one process (the simulator does): the answer depends only
    on the digest and the live set, which `view_fp` names."""

    def __init__(self, k: int = 3, memo: dict[tuple[str, int], tuple[str, ...]] | None = None,
                 limit: int = 200_000) -> None:
        self.k, self.limit = k, limit
        self.memo = {} if memo is None else memo

    def owners(self, digest: str, view: View) -> tuple[str, ...]:
        key = (digest, view.view_fp)
        got = self.memo.get(key)
        if got is None:
            got = self._put(key, tuple(placement.top(digest, view.live_ids(), self.k)))
        return got

    def after_join(self, digest: str, old: tuple[str, ...], joined: str, view: View) -> tuple[str, ...]:
        """The new top-k once `joined` is live, from the old top-k: two hashes, not N."""
        key = (digest, view.view_fp)
        got = self.memo.get(key)
        if got is None:
            if len(old) < self.k or placement.weight(joined, digest) > placement.weight(old[-1], digest):
                got = tuple(sorted((*old, joined), key=lambda n: placement.weight(n, digest),
                                   reverse=True)[:self.k])
            else:
                got = old
            got = self._put(key, got)
        return got

    def _put(self, key: tuple[str, int], value: tuple[str, ...]) -> tuple[str, ...]:
        if len(self.memo) >= self.limit:
            self.memo.clear()
        self.memo[key] = value
        return value


@dataclass
class DirectoryConfig:
    k: int = 3
    batch_delay: float = 0.05  # holders' changes to one owner go out together
    resend: float = 0.3  # unacknowledged batches are resent after this long
    resend_max: int = 8
    batch_ops: int = 512
    max_message: int = 0  # bytes a batch message may take (a datagram's room), 0: no bound
    lookup_fanout: int = 2  # owners asked at once: one lost datagram does not cost a timeout
    lookup_timeout: float = 0.05
    lookup_tries: int = 4
    answer_max: int = 8  # holders per answer, a random sample: popular holders are not stampeded
    per_holder_max: int = 65_536  # entries one holder may place on this node
    entries_max: int = 4_000_000


class Directory:
    def __init__(self, view: View, send: Callable[[str, bytes], None], sched: Scheduler,
                 config: DirectoryConfig | None = None, *, ranker: Ranker | None = None,
                 rng: random.Random | None = None, epoch: str | None = None) -> None:
        self.view, self._send, self.sched = view, send, sched
        self.cfg = config or DirectoryConfig()
        self.ranker = ranker or Ranker(self.cfg.k)
        self.rng = rng or random.Random()
        self.epoch = epoch or f"{self.rng.getrandbits(48):012x}"  # a restarted holder starts clean
        # holder side
        self.local: set[str] = set()
        self._owners: dict[str, tuple[str, ...]] = {}
        self._by_owner: dict[str, set[str]] = {}
        self._out: dict[str, list[list[str]]] = {}
        self._flush: TimerHandle | None = None
        self._ids = count(1)
        self._unacked: dict[int, tuple[str, list[list[str]], int]] = {}
        # owner side
        self.table: dict[str, set[str]] = {}
        self._held_by: dict[str, set[str]] = {}
        self._epochs: dict[str, str] = {}
        self.entries = 0
        # lookups
        self._lookups: dict[int, _Lookup] = {}
        self.stats = {"dropped": 0, "resent": 0, "moved": 0}
        view.on_change(self._member_changed)

    # -- holder side -----------------------------------------------------------------------------
    def add(self, digest: str) -> None:
        if digest in self.local:
            return
        self.local.add(digest)
        owners = self._owners[digest] = self.ranker.owners(digest, self.view)
        for o in owners:
            self._by_owner.setdefault(o, set()).add(digest)
            self._enqueue(o, "+", digest)

    def remove(self, digest: str) -> None:
        if digest not in self.local:
            return
        self.local.discard(digest)
        for o in self._owners.pop(digest, ()):
            self._by_owner.get(o, set()).discard(digest)
            self._enqueue(o, "-", digest)

    def _enqueue(self, owner: str, op: str, digest: str) -> None:
        if owner == self.view.id:
            self._apply(owner, self.epoch, [[op, digest]])
            return
        self._out.setdefault(owner, []).append([op, digest])
        if self._flush is None:
            self._flush = self.sched.call_later(self.cfg.batch_delay, self._send_batches)

    def _send_batches(self) -> None:
        self._flush = None
        out, self._out = self._out, {}
        for owner, ops in out.items():
            for batch in self._batches(ops):
                bid = next(self._ids)
                self._unacked[bid] = (owner, batch, 0)
                self._send_batch(bid)

    def _batches(self, ops: list[list[str]]) -> list[list[list[str]]]:
        """`ops` cut into batches of at most `batch_ops`, each message within `max_message` bytes
        (a resent batch says "+" or "-" for the same digests: the same size)."""
        limit = self.cfg.max_message
        head = len(encode(["d+", 10**19, self.epoch, []]))  # the largest batch id that can occur
        out: list[list[list[str]]] = [[]]
        size = head
        for op in ops:
            n = len(encode(op)) + 1
            if out[-1] and (len(out[-1]) >= self.cfg.batch_ops or (limit and size + n > limit)):
                out.append([])
                size = head
            out[-1].append(op)
            size += n
        return out if out[0] else []

    def _send_batch(self, bid: int) -> None:
        owner, ops, tries = self._unacked[bid]
        if self.view.state(owner) in (None, DEAD) or tries >= self.cfg.resend_max:
            del self._unacked[bid]  # a dead owner's keys were handed to the next owner already
            return
        if tries:  # say what is true now: a resent "+" must not undo a later "-" that got through
            self.stats["resent"] += 1
            ops = [["+" if d in self.local and owner in self._owners.get(d, ()) else "-", d] for _, d in ops]
        self._unacked[bid] = (owner, ops, tries + 1)
        self._send(owner, encode(["d+", bid, self.epoch, ops]))
        self.sched.call_later(self.cfg.resend * (1 + tries), self._resend, bid)

    def _resend(self, bid: int) -> None:
        if bid in self._unacked:
            self._send_batch(bid)

    def preload_local(self, digests: list[str]) -> dict[str, list[list[str]]]:
        """Record holdings without sending them; returns each owner's share for the caller to hand
        over in bulk (a simulator's starting state, or a state transfer)."""
        shares: dict[str, list[list[str]]] = {}
        for digest in digests:
            if digest in self.local:
                continue
            self.local.add(digest)
            owners = self._owners[digest] = self.ranker.owners(digest, self.view)
            for o in owners:
                self._by_owner.setdefault(o, set()).add(digest)
                shares.setdefault(o, []).append(["+", digest])
        return shares

    def preload_share(self, holder: str, epoch: str, ops: list[list[str]]) -> None:
        self._apply(holder, epoch, ops)

    def preload_share_many(self, digest: str, holders: list[str]) -> None:
        for h in holders:
            self._apply(h, self._epochs.get(h, "preload"), [["+", digest]])

    # -- owner side ------------------------------------------------------------------------------
    def _apply(self, holder: str, epoch: str, ops: list[Any]) -> None:
        if self._epochs.get(holder) != epoch:
            self._drop_holder(holder)  # a new process of that holder: what it held before is void
            self._epochs[holder] = epoch
        mine = self._held_by.setdefault(holder, set())
        for op, digest in ops:
            if not isinstance(digest, str) or len(digest) > 200:
                raise ValueError("digest")
            if op == "+":
                if digest in mine:
                    continue
                if len(mine) >= self.cfg.per_holder_max or self.entries >= self.cfg.entries_max:
                    self.stats["dropped"] += 1
                    continue
                mine.add(digest)
                self.table.setdefault(digest, set()).add(holder)
                self.entries += 1
            elif op == "-":
                if digest in mine:
                    mine.discard(digest)
                    self._unlist(digest, holder)
            else:
                raise ValueError("op")

    def _unlist(self, digest: str, holder: str) -> None:
        held = self.table.get(digest)
        if held is not None and holder in held:
            held.discard(holder)
            self.entries -= 1
            if not held:
                del self.table[digest]

    def _drop_holder(self, holder: str) -> None:
        for digest in self._held_by.pop(holder, ()):
            self._unlist(digest, holder)
        self._epochs.pop(holder, None)

    def holders(self, digest: str) -> list[str]:
        """Live holders this node knows as an owner, a random sample of at most answer_max."""
        held = list(self.table.get(digest, ()))
        want = self.cfg.answer_max
        live = [h for h in self.rng.sample(held, min(len(held), 3 * want)) if self.view.state(h) not in (None, DEAD)]
        if len(live) < want and len(held) > 3 * want:  # many of a popular digest's holders died
            live = [h for h in held if self.view.state(h) not in (None, DEAD)]
        return live[:want] if len(live) <= want else self.rng.sample(live, want)

    # -- messages ----------------------------------------------------------------------------------
    def on_message(self, src: str, data: bytes) -> None:
        """`src` is the sending member's id, as authenticated by the link it came over."""
        try:
            msg = json.loads(data.decode())
            kind = msg[0]
            if kind == "d+":  # [d+, batch id, epoch, ops]
                if self.view.state(src) in (None, DEAD):
                    return  # not a member (or one declared dead): nothing of it is kept
                ops = msg[3]
                if not isinstance(ops, list) or len(ops) > self.cfg.batch_ops:
                    raise ValueError("ops")
                self._apply(src, str(msg[2]), ops)
                self._send(src, encode(["dk", int(msg[1])]))
            elif kind == "dk":
                self._unacked.pop(int(msg[1]), None)
            elif kind == "dq":  # [dq, query id, digest]
                self._send(src, encode(["dr", int(msg[1]), self.holders(str(msg[2]))]))
            elif kind == "dr":
                q = self._lookups.get(int(msg[1]))
                if q is not None:
                    q.answer(src, [h for h in msg[2][:self.cfg.answer_max] if isinstance(h, str)])
            else:
                raise ValueError(kind)
        except (ValueError, TypeError, IndexError, KeyError, AttributeError):
            self.stats["dropped"] += 1

    # -- lookups -----------------------------------------------------------------------------------
    def lookup(self, digest: str, reply: Reply) -> None:
        """Ask the digest's owners who holds it; `reply(holders)` once (empty when nobody does)."""
        owners = [o for o in self.ranker.owners(digest, self.view)]
        if self.view.id in owners and self.holders(digest):
            reply(self.holders(digest))
            return
        owners = [o for o in owners if o != self.view.id]
        if not owners:
            reply([])
            return
        q = _Lookup(self, next(self._ids), digest, owners, reply)
        self._lookups[q.qid] = q
        q.ask(self.cfg.lookup_fanout)

    # -- membership changes ------------------------------------------------------------------------
    def _member_changed(self, mid: str, old: str | None, new: str) -> None:
        if new == GONE:
            self._drop_holder(mid)  # answers skipped it since it was declared dead; now free it
        elif new == DEAD:
            for digest in self._by_owner.pop(mid, ()):
                if digest in self.local:
                    self._rehome(digest, self.ranker.owners(digest, self.view))
        elif old in (None, DEAD) and mid != self.view.id:
            for digest in self.local:
                owners = self._owners[digest]
                new_owners = self.ranker.after_join(digest, owners, mid, self.view)
                if new_owners is not owners and new_owners != owners:
                    self._rehome(digest, new_owners)

    def _rehome(self, digest: str, owners: tuple[str, ...]) -> None:
        """Send the digest to owners that gained it and take it back from those that lost it."""
        old = self._owners.get(digest, ())
        self._owners[digest] = owners
        self.stats["moved"] += 1
        for o in owners:
            if o not in old:
                self._by_owner.setdefault(o, set()).add(digest)
                self._enqueue(o, "+", digest)
        for o in old:
            if o not in owners:
                self._by_owner.get(o, set()).discard(digest)
                if self.view.state(o) not in (None, DEAD):
                    self._enqueue(o, "-", digest)


class _Lookup:
    __slots__ = ("asked", "d", "digest", "done", "owners", "qid", "replied", "reply", "timer", "tries")

    def __init__(self, d: Directory, qid: int, digest: str, owners: list[str], reply: Reply) -> None:
        self.d, self.qid, self.digest, self.owners, self.reply = d, qid, digest, owners, reply
        self.asked: list[str] = []
        self.replied: set[str] = set()
        self.tries = 0
        self.done = False
        self.timer: TimerHandle | None = None

    def ask(self, n: int) -> None:
        fresh = [o for o in self.owners if o not in self.asked][:n]
        targets = fresh or [o for o in self.owners if o not in self.replied]
        self.asked.extend(fresh)
        for o in targets:
            self.d._send(o, encode(["dq", self.qid, self.digest]))
        self.tries += 1
        self.timer = self.d.sched.call_later(self.d.cfg.lookup_timeout * self.tries, self.timeout)

    def answer(self, owner: str, holders: list[str]) -> None:
        if self.done or owner not in self.owners:
            return
        self.replied.add(owner)
        live = [h for h in holders if self.d.view.state(h) not in (None, DEAD)]
        if live:
            self.finish(live)
        elif all(o in self.replied for o in self.owners):
            self.finish([])
        elif all(o in self.replied for o in self.asked):
            self.ask(1)

    def timeout(self) -> None:
        if self.done:
            return
        if self.tries >= self.d.cfg.lookup_tries:
            self.finish([])
        else:
            self.ask(1)

    def finish(self, holders: list[str]) -> None:
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
        self.d._lookups.pop(self.qid, None)
        self.reply(holders)


class OwnerChain:
    """Who fetches a cold blob from the origin for everyone: rank 1, then rank 2, then rank 3.

    The chain is fixed when the fetch starts, so every requester walks the same one; a requester
    moves on only when membership declares the current owner dead or the owner refuses, and the
    owner it asks fetches itself (delegated), never delegating further. At most k origin fetches,
    one per owner that died mid-fetch."""

    def __init__(self, directory: Directory, digest: str) -> None:
        self.digest = digest
        self.view = directory.view
        self.chain = list(directory.ranker.owners(digest, directory.view))
        self.pos = 0

    def current(self) -> str | None:
        while self.pos < len(self.chain) and self.view.state(self.chain[self.pos]) in (None, DEAD):
            self.pos += 1
        return self.chain[self.pos] if self.pos < len(self.chain) else None

    def failed(self, owner: str) -> str | None:
        """`owner` refused or broke the stream: the next owner to ask (None: fetch it yourself)."""
        if self.pos < len(self.chain) and self.chain[self.pos] == owner:
            self.pos += 1
        return self.current()

