"""A cap on blob bodies this node serves to peers at once (`[limits] peer_uploads`).

Why: in a large cluster a popular holder is the first answer for many requesters; without a cap it
serves them all at once, each slower than the last, and its own clients starve. Over the cap a peer
gets 429 at once, before any byte, and its fetcher moves on to another holder (or comes back) without
counting a fault: the next holder is usually as close as this one."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from beiran.errors import TooManyRequests


class UploadSlots:
    def __init__(self, limit: int, on_refuse: Callable[[], None] | None = None) -> None:
        self.limit = limit
        self.active = 0
        self.on_refuse = on_refuse  # counts the refusal (the daemon's metrics)

    @contextmanager
    def slot(self) -> Iterator[None]:
        if self.active >= self.limit:
            if self.on_refuse is not None:
                self.on_refuse()
            raise TooManyRequests(f"{self.active} uploads to peers in flight (the cap is {self.limit}); "
                                  "try another holder")
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1
