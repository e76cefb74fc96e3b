"""Rendezvous (highest-random-weight) hashing: every node ranks the same candidates the same way
for a digest, with no coordinator, so one node fetches a cold blob from the origin for all."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def rank(digest: str, nodes: Iterable[str]) -> list[str]:
    """Nodes ordered by their weight for `digest`, highest first."""
    def weight(node: str) -> bytes:
        return hashlib.sha256(f"{node}|{digest}".encode()).digest()
    return sorted(set(nodes), key=weight, reverse=True)


def owner(digest: str, nodes: Iterable[str]) -> str | None:
    ranked = rank(digest, nodes)
    return ranked[0] if ranked else None
