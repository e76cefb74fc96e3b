"""Preheat: chosen nodes fetch a list of blobs now, before clients ask, each through its own fetcher.

Origin-once still holds across the cluster: every node's fetcher delegates a cold blob to its
rendezvous owner and streams from the node that is downloading it. A node accepts a preheat from a
peer only in a cluster with a token, only for sources its own config resolves, and within bounds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from beiran.errors import BadRequest, BeiranError, Forbidden
from beiran.fetch.origins import check_source
from beiran.store.digest import parse_digest

if TYPE_CHECKING:
    from beiran.context import DaemonContext
    from beiran.peer.connection import PeerConnection

log = logging.getLogger("beiran.preheat")
MAX_BLOBS = 512  # blobs in one preheat request (an image has tens)
PARALLEL = 4  # fetches one preheat runs at once on a node
REMEMBERED = 4096  # finished blobs whose outcome a progress query can still see


@dataclass
class Outcome:
    state: str  # downloading | complete | failed
    total: int | None
    sources: dict[str, int] = field(default_factory=dict)
    error: str = ""


class Preheater:
    """Runs preheats on this node and answers what became of each blob."""

    def __init__(self, ctx: DaemonContext) -> None:
        self.ctx = ctx
        self.outcomes: OrderedDict[str, Outcome] = OrderedDict()
        self.tasks: set[asyncio.Task] = set()
        self._sem = asyncio.Semaphore(PARALLEL)

    def start(self, blobs: list[tuple[str, int | None]], source: dict[str, Any]) -> None:
        for digest, size in blobs:
            if digest in self.outcomes and self.outcomes[digest].state != "failed":
                continue
            self._remember(digest, Outcome("downloading", size))
            task = asyncio.ensure_future(self._one(digest, size, source))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _one(self, digest: str, size: int | None, source: dict[str, Any]) -> None:
        async with self._sem:
            try:
                job = await self.ctx.fetcher.start(digest, size, source)
                await asyncio.shield(job.done)
                self._remember(digest, Outcome("complete", job.size, dict(job.bytes_from)))
            except BeiranError as exc:
                self._remember(digest, Outcome("failed", size, error=exc.message))
            except Exception as exc:  # noqa: BLE001 - the outcome is reported to whoever asked
                log.warning("preheat of %s failed: %s", digest[:19], exc)
                self._remember(digest, Outcome("failed", size, error=str(exc) or type(exc).__name__))

    def _remember(self, digest: str, outcome: Outcome) -> None:
        self.outcomes[digest] = outcome
        self.outcomes.move_to_end(digest)
        while len(self.outcomes) > REMEMBERED:
            self.outcomes.popitem(last=False)

    def progress(self, digests: list[str]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for d in digests:
            entry = self.ctx.store.get(d)
            known = self.outcomes.get(d)
            job = self.ctx.fetcher.jobs.get(d)
            if known is not None and known.state != "downloading":
                out[d] = {"state": known.state, "bytes": (known.total or 0) if known.state == "complete" else 0,
                          "total": known.total, "sources": known.sources, "error": known.error}
            elif job is not None:
                p = job.progress()
                out[d] = {"state": "downloading", "bytes": p["bytes"], "total": p["total"], "sources": p["sources"]}
            elif entry is not None:
                out[d] = {"state": "complete", "bytes": entry.size, "total": entry.size,
                          "sources": known.sources if known else {"local": entry.size}}
            else:
                out[d] = {"state": "downloading" if known else "missing", "bytes": 0,
                          "total": known.total if known else None, "sources": {}}
        return out


def parse_blobs(blobs: Any) -> list[tuple[str, int | None]]:
    """A peer's (or a client's) blob list, checked: digests parsed, sizes bounded, length capped."""
    if not isinstance(blobs, list) or not blobs or len(blobs) > MAX_BLOBS:
        raise BadRequest(f"blobs must be a list of 1 to {MAX_BLOBS} {{digest, size}} objects")
    out = []
    for b in blobs:
        if not isinstance(b, dict):
            raise BadRequest("each blob is an object {digest, size}")
        size = b.get("size")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or not 0 <= size < 1 << 50):
            raise BadRequest("blob size must be a non-negative integer")
        out.append((str(parse_digest(str(b.get("digest", "")))), size))
    return out


async def rpc_preheat(conn: PeerConnection, blobs: Any = None, source: Any = None) -> dict[str, Any]:
    """A peer asks this node to fetch blobs now. Only in a cluster with a token: without one, any
    host that reaches the port could make every node download whatever it names."""
    ctx = conn.ctx
    if not ctx.auth.enabled:
        raise Forbidden("preheat from peers needs a cluster_token on this node")
    parsed = parse_blobs(blobs)
    src = check_source(ctx, source)  # resolved against this node's own config, or refused
    ctx.preheater.start(parsed, src)
    log.info("preheating %d blobs for peer %s", len(parsed), (conn.uuid or "?")[:8])
    return {"accepted": len(parsed), "at": time.time()}


async def rpc_progress(conn: PeerConnection, digests: Any = None) -> dict[str, Any]:
    if not isinstance(digests, list) or len(digests) > MAX_BLOBS:
        raise BadRequest(f"digests must be a list of at most {MAX_BLOBS}")
    return conn.ctx.preheater.progress([str(parse_digest(str(d))) for d in digests])
