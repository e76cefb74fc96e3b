"""Rendezvous (highest-random-weight) hashing: every node ranks the same candidates the same way
for a digest, with no coordinator, so one node fetches a cold blob from the origin for all."""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterable


def weight(node: str, digest: str) -> bytes:
    """A node's weight for a digest; the order of these is the ranking."""
    return hashlib.sha256(f"{node}|{digest}".encode()).digest()


def rank(digest: str, nodes: Iterable[str]) -> list[str]:
    """Nodes ordered by their weight for `digest`, highest first."""
    return sorted(set(nodes), key=lambda node: weight(node, digest), reverse=True)


def top(digest: str, nodes: Iterable[str], k: int) -> list[str]:
    """`rank(digest, nodes)[:k]` without sorting every node (the directory asks this per key)."""
    return heapq.nlargest(k, set(nodes), key=lambda node: weight(node, digest))


def owner(digest: str, nodes: Iterable[str]) -> str | None:
    ranked = rank(digest, nodes)
    return ranked[0] if ranked else None
