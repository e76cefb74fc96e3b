"""Caps on the work a peer can make this node do: delegated fetches ("fetch this cold blob from
your origin for me") in flight per peer, and the bytes they claim. A peer's request costs origin
bandwidth, disk and connections, so each peer gets a bounded share; the caps are
`[fetch] peer_max_fetches` and `[fetch] peer_max_bytes`."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from beiran.errors import TooManyRequests

if TYPE_CHECKING:
    from beiran.context import DaemonContext
    from beiran.fetch.fetcher import FetchJob

log = logging.getLogger("beiran.fetch")


class PeerAdmission:
    def __init__(self, ctx: DaemonContext) -> None:
        self.ctx = ctx
        #: peer uuid -> digest -> bytes charged (the claimed size; 0 while unknown)
        self.active: dict[str, dict[str, int]] = {}

    def in_flight(self, peer: str) -> tuple[int, int]:
        mine = self.active.get(peer, {})
        return len(mine), sum(mine.values())

    def admit(self, peer: str, digest: str, size: int | None) -> bool:
        """Charge a new delegated fetch to `peer`; TooManyRequests when it is over its caps.
        False when this peer already has that digest in flight (nothing more is charged)."""
        mine = self.active.setdefault(peer, {})
        if digest in mine:
            return False
        cfg = self.ctx.config.fetch
        count, claimed = len(mine), sum(mine.values())
        if count >= cfg.peer_max_fetches:
            self.ctx.metrics.peer_refused.labels("fetches").inc()
            raise TooManyRequests(f"{count} fetches for this node already in flight (the cap is "
                                  f"{cfg.peer_max_fetches}); try again later")
        if claimed + (size or 0) > cfg.peer_max_bytes:
            self.ctx.metrics.peer_refused.labels("bytes").inc()
            raise TooManyRequests("the bytes of this node's fetches in flight would exceed the cap "
                                  f"({cfg.peer_max_bytes}); try again later")
        mine[digest] = size or 0
        return True

    def hold_until_done(self, peer: str, job: FetchJob) -> None:
        """Keep the charge until the job ends (its real size, once known, replaces the claim)."""
        mine = self.active.get(peer, {})
        if job.size is not None and job.digest in mine:
            mine[job.digest] = max(mine[job.digest], job.size)
        job.done.add_done_callback(lambda _: self.release(peer, job.digest))

    def charge_known(self, job: FetchJob) -> None:
        """The origin told the size of a fetch the peer admitted without one (charged 0 then):
        charge it now; TooManyRequests (the fetch ends) when that puts the peer over its byte cap."""
        mine = self.active.get(job.for_peer or "")
        if mine is None or job.size is None or mine.get(job.digest, job.size) >= job.size:
            return
        others = sum(n for d, n in mine.items() if d != job.digest)
        mine[job.digest] = job.size
        cap = self.ctx.config.fetch.peer_max_bytes
        if others + job.size > cap:
            self.ctx.metrics.peer_refused.labels("bytes").inc()
            raise TooManyRequests(f"the bytes of this node's fetches in flight would exceed the cap ({cap}) "
                                  "once this blob's size is counted; try again later")

    def release(self, peer: str, digest: str) -> None:
        mine = self.active.get(peer)
        if mine is not None:
            mine.pop(digest, None)
            if not mine:
                del self.active[peer]
