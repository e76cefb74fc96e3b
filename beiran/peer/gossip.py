"""The parts of SWIM's dissemination that are not about membership itself: the scheduler the
protocol runs on, the wire encoding, view fingerprints, the piggy-back queue with its bounded
retransmit count, and Lifeguard's suspicion timeout."""

from __future__ import annotations

import functools
import hashlib
import json
import math
import operator
from collections.abc import Callable
from typing import Any, Protocol


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Scheduler(Protocol):
    """What the protocols need of time; `asyncio.get_running_loop()` satisfies it."""

    def time(self) -> float: ...

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> TimerHandle: ...


_ENCODER = json.JSONEncoder(separators=(",", ":"), check_circular=False)  # messages are trees


def encode(msg: list[Any]) -> bytes:
    return _ENCODER.encode(msg).encode()


_IDS: dict[str, int] = {}
_FIRST: dict[str, int] = {}
_M64 = (1 << 64) - 1


def hid(mid: str) -> int:
    """A stable 64-bit hash of a member id (cached: every node hashes every id)."""
    h = _IDS.get(mid)
    if h is None:
        if len(_IDS) > 1 << 20:
            _IDS.clear()
        h = _IDS[mid] = int.from_bytes(hashlib.blake2b(mid.encode(), digest_size=8).digest(), "big")
    return h


def hinc(mid: str, inc: int) -> int:
    """(id, incarnation) mixed (splitmix64), so equal incarnation bumps cannot cancel in an XOR."""
    if inc == 0:  # what every member starts with: cached like the id hash
        h = _FIRST.get(mid)
        if h is None:
            if len(_FIRST) > 1 << 20:
                _FIRST.clear()
            h = _FIRST[mid] = _mix(hid(mid), 0)
        return h
    return _mix(hid(mid), inc)


def _mix(h: int, inc: int) -> int:
    z = (h + (inc + 1) * 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


@functools.lru_cache(maxsize=256)
def retransmit_limit(mult: int, members: int) -> int:
    """How many times one update is sent: lambda * log(n) reaches every member with high
    probability (the SWIM paper's infection-style bound); at least 2 * mult for small clusters."""
    return mult * max(2, math.ceil(math.log10(members + 1)))


def suspicion_timeout(confirmations: int, expected: int, lo: float, hi: float) -> float:
    """Lifeguard: start at `hi`, fall logarithmically to `lo` as independent suspicions arrive."""
    if expected <= 0:
        return lo
    frac = math.log(confirmations + 1) / math.log(expected + 1)
    return max(lo, hi - (hi - lo) * frac)


class BroadcastQueue:
    """News waiting to be piggy-backed, least-sent first; a newer update about a member replaces the
    older one, and each leaves the queue after the retransmit limit."""

    def __init__(self) -> None:
        self._items: dict[str, list[Any]] = {}  # key -> [transmits, update, encoded size, key]

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def put(self, update: list[Any], key: str | None = None) -> None:
        """Keyed by member id, or `id|from` for confirmations, which a new state of that member voids."""
        if key is None:
            prefix = update[1] + "|"
            for k in [k for k in self._items if k.startswith(prefix)]:
                del self._items[k]
        key = key or update[1]
        self._items[key] = [0, update, len(encode(update)) + 1, key]

    def take(self, room: int, limit: int) -> list[Any]:
        out = []
        items = self._items
        for item in sorted(items.values(), key=_SENT)[:32] if len(items) > 1 else list(items.values()):
            if item[2] > room:
                continue
            room -= item[2]
            out.append(item[1])
            item[0] += 1
            if item[0] >= limit:
                del items[item[3]]
        return out


_SENT = operator.itemgetter(0)
