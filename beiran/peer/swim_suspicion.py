"""Lifeguard's suspicion timers (Dadgar et al. 2017, section IV-B).

Why: a member suspected by one node may only be slow to answer that node; declaring it dead after
a fixed wait makes a loaded prober accuse healthy members. Here a suspicion starts at its longest
wait and the wait falls towards the shortest as independent members confirm it, so a member many
see failing is declared dead fast and one only this node doubts gets time to refute.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from beiran.peer.gossip import Scheduler, TimerHandle, suspicion_timeout
from beiran.peer.swim_config import SwimConfig


class _Suspicion:
    __slots__ = ("confirmers", "handle", "inc", "k", "max", "min", "start")

    def __init__(self, inc: int, start: float, frm: str, lo: float, hi: float, k: int) -> None:
        self.inc, self.start, self.confirmers = inc, start, {frm}
        self.min, self.max, self.k = lo, hi, k
        self.handle: TimerHandle | None = None


class Suspicions:
    """The members this node suspects, each with a timer that calls `expired(id, incarnation)`."""

    def __init__(self, sched: Scheduler, cfg: SwimConfig, expired: Callable[[str, int], None]) -> None:
        self.sched, self.cfg, self.expired = sched, cfg, expired
        self._by_id: dict[str, _Suspicion] = {}

    def __contains__(self, mid: str) -> bool:
        return mid in self._by_id

    def start(self, mid: str, inc: int, frm: str, members: int) -> None:
        """Suspect `mid` at incarnation `inc` on `frm`'s word, in a cluster of `members` live ones."""
        c, n = self.cfg, max(members, 1)
        lo = c.suspicion_mult * max(1.0, math.log10(n)) * c.probe_interval
        k = max(0, min(c.suspicion_confirmations, n - 2))
        self.cancel(mid)
        s = self._by_id[mid] = _Suspicion(inc, self.sched.time(), frm, lo, c.suspicion_max_mult * lo, k)
        self._arm(mid, s)

    def confirm(self, mid: str, frm: str) -> bool:
        """`frm` suspects `mid` too: True when that is a new independent voice (the wait shrank)."""
        s = self._by_id.get(mid)
        if s is None or frm in s.confirmers or len(s.confirmers) > s.k:
            return False
        s.confirmers.add(frm)
        self._arm(mid, s)
        return True

    def cancel(self, mid: str) -> None:
        s = self._by_id.pop(mid, None)
        if s is not None and s.handle is not None:
            s.handle.cancel()

    def stop(self) -> None:
        for mid in list(self._by_id):
            self.cancel(mid)

    def _arm(self, mid: str, s: _Suspicion) -> None:
        timeout = suspicion_timeout(len(s.confirmers) - 1, s.k, s.min, s.max)
        if s.handle is not None:
            s.handle.cancel()
        left = max(0.0, s.start + timeout - self.sched.time())
        s.handle = self.sched.call_later(left, self._fire, mid, s)

    def _fire(self, mid: str, s: _Suspicion) -> None:
        if self._by_id.get(mid) is s:
            del self._by_id[mid]
            self.expired(mid, s.inc)
