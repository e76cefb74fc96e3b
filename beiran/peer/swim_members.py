"""The records SWIM keeps about each member: its state, incarnation and address, the bounds a
peer's claims about a member must fit, and the shared starting table the simulator's thousands of
nodes copy on write."""

from __future__ import annotations

import random
from functools import reduce
from itertools import repeat
from operator import xor
from typing import Any

from beiran.peer.gossip import hid, hinc

ALIVE, SUSPECT, DEAD = "alive", "suspect", "dead"
GONE = "gone"  # a dead record forgotten after `dead_keep`: listeners free what they kept for it
MAX_ID, MAX_ADDR, MAX_INC = 64, 128, 1 << 53
#: how far one claim may raise a member's incarnation above what a node knows of it (a member
#: refuting a lie raises its own by one: 2^16 refutations would be needed to outgrow this honestly)
MAX_INC_JUMP = 1 << 16

#: a state as one letter on the wire
LETTER = {ALIVE: "a", SUSPECT: "s", DEAD: "d"}


class Member:
    __slots__ = ("addr", "id", "inc", "since", "state")

    def __init__(self, mid: str, addr: str, inc: int, state: str, since: float) -> None:
        self.id, self.addr, self.inc, self.state, self.since = mid, addr, inc, state, since

    def update(self) -> list[Any]:
        """This record as the update that spreads it: [letter, id, incarnation, address]."""
        return [LETTER[self.state], self.id, self.inc, self.addr]


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


def pick_live(live: list[str], n: int, exclude: tuple[str, ...], rng: random.Random) -> list[str]:
    """Up to `n` distinct random ids of `live` outside `exclude`, without copying the live list."""
    if len(live) <= 4 * (n + len(exclude)):
        others = [i for i in live if i not in exclude]
        return rng.sample(others, min(n, len(others)))
    picks: list[str] = []
    rand = rng.random
    while len(picks) < n:
        i = live[int(rand() * len(live))]
        if i not in exclude and i not in picks:
            picks.append(i)
    return picks
