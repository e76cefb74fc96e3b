"""Counts of things in use now, per key: calls per peer, busy links per node, transfers per holder,
connections per client address.

Why one type: each of these is read as "how many right now" and checked against a cap, and each
must forget a key at zero, or the map grows with every peer or address ever seen.
"""

from __future__ import annotations

from typing import TypeVar

K = TypeVar("K")


class InUse(dict[K, int]):
    """key -> how many are in use; a key is present only while its count is above zero."""

    def add(self, key: K) -> int:
        n = self[key] = self.get(key, 0) + 1
        return n

    def done(self, key: K) -> None:
        """One fewer in use (never below zero: a key not in use stays absent)."""
        n = self.get(key, 0) - 1
        if n > 0:
            self[key] = n
        else:
            self.pop(key, None)
