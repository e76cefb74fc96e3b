"""Bounded peer links for large clusters, and spreading downloads over holders.

Why: above the full-mesh size a node talks to the few owners and holders its work needs, not to
everyone; `LinkPool` keeps at most `max_open` of those links open (least recently used closed
first, busy ones never), so connection count is a constant, not a function of cluster size.
`HolderPicker` chooses among the holders a directory answer names the one this node loads least,
ties at random, so a thousand requesters of a popular blob do not all pick the same first holder.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

from beiran.counts import InUse

L = TypeVar("L")


class PoolExhausted(Exception):
    """Every link is busy; the caller waits or retries rather than opening one more."""


class LinkPool(Generic[L]):
    def __init__(self, open_link: Callable[[str], L], close_link: Callable[[str, L], None],
                 max_open: int = 64) -> None:
        self._open, self._close, self.max_open = open_link, close_link, max_open
        self._links: OrderedDict[str, L] = OrderedDict()
        self._busy: InUse[str] = InUse()
        self.opened = self.closed = 0
        self.peak = 0

    def __len__(self) -> int:
        return len(self._links)

    def __contains__(self, node: str) -> bool:
        return node in self._links

    def nodes(self) -> list[str]:
        return list(self._links)

    def get(self, node: str) -> L:
        """The link to `node`, opening it (and closing the least recently used idle one) if needed."""
        link = self._links.get(node)
        if link is not None:
            self._links.move_to_end(node)
            return link
        if len(self._links) >= self.max_open:
            victim = next((n for n in self._links if not self._busy.get(n)), None)
            if victim is None:
                raise PoolExhausted(f"all {self.max_open} peer links are busy")
            self.drop(victim)
        link = self._links[node] = self._open(node)
        self.opened += 1
        self.peak = max(self.peak, len(self._links))
        return link

    def acquire(self, node: str) -> L:
        """`get`, and keep the link from eviction until `release`."""
        link = self.get(node)
        self._busy.add(node)
        return link

    def release(self, node: str) -> None:
        self._busy.done(node)

    def drop(self, node: str) -> None:
        """Close the link to `node` (evicted, or the node died)."""
        link = self._links.pop(node, None)
        self._busy.pop(node, None)
        if link is not None:
            self.closed += 1
            self._close(node, link)


class HolderPicker:
    """Spread this node's downloads over holders: least in flight first, random among equals."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()
        self.in_flight: InUse[str] = InUse()

    def pick(self, holders: Iterable[str]) -> str | None:
        options = list(holders)
        if not options:
            return None
        self.rng.shuffle(options)
        node = min(options, key=lambda h: self.in_flight.get(h, 0))
        self.in_flight.add(node)
        return node

    def done(self, node: str) -> None:
        self.in_flight.done(node)
