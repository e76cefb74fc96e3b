"""Who holds what: this node's change log (for delta sync) and every peer's announced blobs."""

from __future__ import annotations

import re
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from beiran.store.digest import ALGORITHMS

COMPLETE, PARTIAL = "c", "p"
LOG_LIMIT = 100_000
DEFAULT_PEER_MAX_BLOBS = 250_000
DEFAULT_PEER_MAX_BLOBS_TOTAL = 2_000_000
MAX_BLOB_SIZE = 1 << 50  # a claimed size beyond this (1 PiB) is nonsense
#: the wire check of a digest: the same shapes `parse_digest` accepts, in one regex call
DIGEST_RE = re.compile("|".join(f"{alg}:[0-9a-f]{{{n}}}" for alg, n in ALGORITHMS.items()))


class HoldingsError(ValueError):
    """A peer's announcement is malformed or over its cap: the connection is dropped."""


def check_entry(digest: object, size: object) -> int | None:
    """Validate one announced (digest, size); returns the size."""
    if not isinstance(digest, str) or not DIGEST_RE.fullmatch(digest):
        raise HoldingsError(f"not a digest: {str(digest)[:80]!r}")
    if size is None:
        return None
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_BLOB_SIZE:
        raise HoldingsError(f"bad size for {digest[:19]}")
    return size


@dataclass
class PeerHoldings:
    epoch: str = ""
    seq: int = 0
    online: bool = False
    blobs: dict[str, tuple[str, int | None]] = field(default_factory=dict)  # digest -> (state, size)


class Availability:
    def __init__(self, peer_max_blobs: int = DEFAULT_PEER_MAX_BLOBS,
                 peer_max_blobs_total: int = DEFAULT_PEER_MAX_BLOBS_TOTAL) -> None:
        self.peer_max_blobs = peer_max_blobs
        self.peer_max_blobs_total = peer_max_blobs_total
        self.epoch = uuid.uuid4().hex  # new per run: a restarted node re-announces everything
        self.seq = 0
        self.local: dict[str, tuple[str, int | None]] = {}
        self._log: deque[tuple[int, list[Any]]] = deque(maxlen=LOG_LIMIT)
        self.peers: dict[str, PeerHoldings] = {}

    # -- local ---------------------------------------------------------------------------------
    def local_change(self, op: str, digest: str, size: int | None) -> list[Any]:
        """Record a change of this node's holdings; returns the op for delta pushes."""
        if op == "-":
            if digest not in self.local:
                return []
            del self.local[digest]
            entry: list[Any] = ["-", digest]
        else:
            state = COMPLETE if op == "+" else PARTIAL
            if self.local.get(digest, (None,))[0] == COMPLETE and state == PARTIAL:
                return []
            self.local[digest] = (state, size)
            entry = [op, digest, size]
        self.seq += 1
        self._log.append((self.seq, entry))
        return entry

    def snapshot(self) -> list[list[Any]]:
        return [[d, s, n] for d, (s, n) in self.local.items()]

    def ops_since(self, seq: int) -> list[list[Any]] | None:
        """Changes after `seq`, or None when the log no longer reaches back that far."""
        if seq == self.seq:
            return []
        if not self._log or self._log[0][0] > seq + 1 or seq > self.seq:
            return None
        return [op for s, op in self._log if s > seq]

    # -- peers ---------------------------------------------------------------------------------
    def peer(self, node: str) -> PeerHoldings:
        return self.peers.setdefault(node, PeerHoldings())

    def apply_snapshot(self, node: str, epoch: str, seq: int, entries: list[Any], first: bool) -> None:
        """Entries were checked with `check_entry`; raises HoldingsError past the cap."""
        p = self.peer(node)
        if first:
            p.blobs = {}
        p.epoch, p.seq = epoch, seq
        for d, s, n in entries:
            p.blobs[d] = (s, n)
        self._check_cap(node, p)

    def apply_ops(self, node: str, ops: list[Any], seq: int) -> None:
        p = self.peer(node)
        for op in ops:
            if op[0] == "-":
                p.blobs.pop(op[1], None)
            else:
                p.blobs[op[1]] = (COMPLETE if op[0] == "+" else PARTIAL, op[2])
        p.seq = seq
        self._check_cap(node, p)

    def _check_cap(self, node: str, p: PeerHoldings) -> None:
        """Per peer, and over all peers (many peers, e.g. many UUIDs from one host, add up)."""
        if len(p.blobs) > self.peer_max_blobs:
            self.forget(node)
            raise HoldingsError(f"announced more than limits.peer_max_blobs = {self.peer_max_blobs} blobs")
        if self.peer_entries() > self.peer_max_blobs_total:
            self.forget(node)
            raise HoldingsError(f"announcements of all peers exceed limits.peer_max_blobs_total = "
                                f"{self.peer_max_blobs_total}")

    def peer_entries(self) -> int:
        return sum(len(p.blobs) for p in self.peers.values())

    def set_online(self, node: str, online: bool) -> None:
        self.peer(node).online = online

    def forget(self, node: str) -> None:
        self.peers.pop(node, None)

    def holders(self, digest: str) -> tuple[list[str], list[str]]:
        """(online nodes holding it complete, online nodes downloading it)."""
        complete: list[str] = []
        partial: list[str] = []
        for node, p in self.peers.items():
            if not p.online:
                continue
            state = p.blobs.get(digest)
            if state is None:
                continue
            (complete if state[0] == COMPLETE else partial).append(node)
        return complete, partial

    def cluster_view(self, digests: list[str] | None = None) -> dict[str, dict[str, Any]]:
        """digest -> {size, nodes: {uuid: state}} over online peers (not including this node)."""
        view: dict[str, dict[str, Any]] = {}
        for node, p in self.peers.items():
            if not p.online:
                continue
            for d, (s, n) in p.blobs.items():
                if digests is not None and d not in digests:
                    continue
                item = view.setdefault(d, {"size": n, "nodes": {}})
                item["nodes"][node] = "complete" if s == COMPLETE else "downloading"
        return view
