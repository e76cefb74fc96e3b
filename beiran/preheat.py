"""Preheat: chosen nodes fetch a list of blobs now, before clients ask, each through its own fetcher.

Origin-once still holds across the cluster: every node's fetcher delegates a cold blob to its
rendezvous owner and streams from the node that is downloading it. A node accepts a preheat from a
peer only in a cluster with a token, only for sources its own config resolves, and within bounds.
Plugins only turn their names (an image, npm packages) into blobs with sources; the rest is here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from beiran.errors import BadRequest, BeiranError, Forbidden
from beiran.fetch.origins import check_source
from beiran.store.digest import parse_digest

if TYPE_CHECKING:
    from beiran.context import DaemonContext
    from beiran.peer.calls import Caller

log = logging.getLogger("beiran.preheat")
MAX_BLOBS = 512  # blobs in one preheat request (an image has tens)
PARALLEL = 4  # fetches one node runs at once for preheats
REMEMBERED = 4096  # finished blobs whose outcome a progress query can still see
TICK = 0.5
Emit = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class Item:
    digest: str
    size: int | None
    source: dict[str, Any]
    #: the peer that asked (None: this node's admin): its source and size are claims (see fetcher)
    peer: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"digest": self.digest, "size": self.size, "source": self.source}


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
        self.tasks: set[asyncio.Task[None]] = set()
        self._sem = asyncio.Semaphore(PARALLEL)

    def start(self, items: list[Item]) -> None:
        for item in items:
            known = self.outcomes.get(item.digest)
            if known is not None and known.state != "failed":
                continue
            self._remember(item.digest, Outcome("downloading", item.size))
            task = asyncio.ensure_future(self._one(item))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _one(self, item: Item) -> None:
        async with self._sem:
            try:
                job = await self.ctx.fetcher.start(item.digest, item.size, item.source, for_peer=item.peer)
                await asyncio.shield(job.done)
                self._remember(item.digest, Outcome("complete", job.size, dict(job.bytes_from)))
            except BeiranError as exc:  # a peer is told no local detail (paths, disk figures)
                error = exc.for_peer().message if item.peer else exc.message
                self._remember(item.digest, Outcome("failed", item.size, error=error))
            except Exception as exc:  # noqa: BLE001 - the outcome is reported to whoever asked
                log.warning("preheat of %s failed: %s", item.digest[:19], exc)
                error = "the fetch failed on this node" if item.peer else str(exc) or type(exc).__name__
                self._remember(item.digest, Outcome("failed", item.size, error=error))

    def _remember(self, digest: str, outcome: Outcome) -> None:
        self.outcomes[digest] = outcome
        self.outcomes.move_to_end(digest)
        while len(self.outcomes) > REMEMBERED:
            self.outcomes.popitem(last=False)

    def progress(self, digests: list[str]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for d in digests:
            known = self.outcomes.get(d)
            job = self.ctx.fetcher.jobs.get(d)
            entry = self.ctx.store.get(d)
            if known is not None and known.state != "downloading":
                out[d] = {"state": known.state, "bytes": (known.total or 0) if known.state == "complete" else 0,
                          "total": known.total, "sources": known.sources, "error": known.error}
            elif job is not None:
                p = job.progress()
                out[d] = {"state": "downloading", "bytes": p["bytes"], "total": p["total"], "sources": p["sources"]}
            elif entry is not None:
                out[d] = {"state": "complete", "bytes": entry.size, "total": entry.size,
                          "sources": {"local": entry.size}}
            else:
                out[d] = {"state": "downloading" if known else "missing", "bytes": 0,
                          "total": known.total if known else None, "sources": {}}
        return out


def parse_items(ctx: DaemonContext, blobs: Any, peer: str | None = None) -> list[Item]:
    """A peer's blob list, checked: digests parsed, sizes bounded, sources resolved against this
    node's own config (or refused), length capped."""
    if not isinstance(blobs, list) or not blobs or len(blobs) > MAX_BLOBS:
        raise BadRequest(f"blobs must be a list of 1 to {MAX_BLOBS} {{digest, size, source}} objects")
    out = []
    for b in blobs:
        if not isinstance(b, dict):
            raise BadRequest("each blob is an object {digest, size, source}")
        size = b.get("size")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or not 0 <= size < 1 << 50):
            raise BadRequest("blob size must be a non-negative integer")
        out.append(Item(str(parse_digest(str(b.get("digest", "")))), size, check_source(ctx, b.get("source")),
                        peer))
    return out


async def rpc_preheat(conn: Caller, blobs: Any = None) -> dict[str, Any]:
    """A peer asks this node to fetch blobs now. Only in a cluster with a token: without one, any
    host that reaches the port could make every node download whatever it names."""
    ctx = conn.ctx
    if not ctx.auth.enabled:
        raise Forbidden("preheat from peers needs a cluster_token on this node")
    items = parse_items(ctx, blobs, conn.uuid)
    ctx.preheater.start(items)
    log.info("preheating %d blobs for peer %s", len(items), (conn.uuid or "?")[:8])
    return {"accepted": len(items)}


async def rpc_progress(conn: Caller, digests: Any = None) -> dict[str, Any]:
    if not isinstance(digests, list) or len(digests) > MAX_BLOBS:
        raise BadRequest(f"digests must be a list of at most {MAX_BLOBS}")
    return conn.ctx.preheater.progress([str(parse_digest(str(d))) for d in digests])


async def targets(ctx: DaemonContext, nodes: Any, plugin: str | None = None) -> list[str]:
    """"all" (this node and every reachable peer, in either cluster mode; with `plugin`, every peer
    that runs it) or a list of UUIDs / unique 8+ character prefixes."""
    me = ctx.identity.uuid
    if nodes in (None, "all", ["all"]):
        return [me, *sorted(await ctx.peers.reachable(plugin))]
    online = await ctx.peers.reachable()
    if not isinstance(nodes, list) or not nodes or not all(isinstance(n, str) for n in nodes):
        raise BadRequest('nodes must be "all" or a list of node UUIDs')
    out = []
    for n in nodes:
        match = [u for u in [me, *online] if u == n or (len(n) >= 8 and u.startswith(n))]
        if len(match) != 1:
            raise BadRequest(f"{n[:40]} is not this node or an online peer (see `beiran node list`)")
        out.append(match[0])
    return list(dict.fromkeys(out))


def _node_row(node: str, answer: dict[str, Any] | None, error: str) -> dict[str, Any]:
    if error:
        return {"node": node, "state": "failed", "error": error, "bytes": 0, "total": 0, "blobs": 0, "done": 0,
                "sources": {}}
    items = list((answer or {}).values())
    failed = [i for i in items if i.get("state") == "failed"]
    done = sum(1 for i in items if i.get("state") == "complete")
    sources: Counter[str] = Counter()
    for i in items:
        sources.update({k: int(v) for k, v in (i.get("sources") or {}).items() if isinstance(v, (int, float))})
    return {"node": node, "state": "failed" if failed else "complete" if done == len(items) else "downloading",
            "error": failed[0].get("error", "") if failed else "",
            "bytes": sum(int(i.get("bytes") or 0) for i in items),
            "total": sum(int(i.get("total") or 0) for i in items),
            "blobs": len(items), "done": done, "sources": dict(sources)}


def _waiting_row(node: str, items: list[Item]) -> dict[str, Any]:
    return {"node": node, "state": "waiting", "error": "", "bytes": 0, "total": sum(i.size or 0 for i in items),
            "blobs": len(items), "done": 0, "sources": {}}


def _settled(progress: dict[str, dict[str, Any]]) -> bool:
    return all(p.get("state") != "downloading" for p in progress.values())


async def run(ctx: DaemonContext, items: list[Item], nodes: list[str], emit: Emit, *,
              seed: bool = False) -> dict[str, Any]:
    """Ask every node in `nodes` to fetch `items`, report per-node progress until each is done or
    failed; returns the summary (per node, totals by source, failed nodes).

    `seed`: this node fetches the blobs first (even when it is not in `nodes`) and the others are
    asked once it holds them. For sources only this node is known to resolve (an apt archive a peer
    never saw): such a peer may not go to the origin, and gets the blobs from this node instead."""
    started = time.monotonic()
    if len(items) > MAX_BLOBS:
        raise BadRequest(f"{len(items)} blobs: preheat at most {MAX_BLOBS} at once")
    digests = [i.digest for i in items]
    wire = [i.to_dict() for i in items]
    errors: dict[str, str] = {}
    asked: set[str] = set()
    me = ctx.identity.uuid

    async def ask(node: str, method: str, **params: Any) -> Any:
        if node == me:
            if method == "preheat":
                ctx.preheater.start(items)
                return {}
            return ctx.preheater.progress(digests)
        return await ctx.peers.call(node, method, timeout=30.0, **params)

    async def begin(node: str) -> None:
        asked.add(node)
        try:
            await ask(node, "preheat", blobs=wire)
        except BeiranError as exc:
            errors[node] = exc.message

    seeding = seed and any(n != me for n in nodes)
    if seeding:
        ctx.preheater.start(items)
        if me in nodes:
            asked.add(me)
    else:
        await asyncio.gather(*(begin(n) for n in nodes))
    while True:
        if seeding and _settled(ctx.preheater.progress(digests)):
            seeding = False
            ctx.peers.push_holdings()  # peers learn what this node now holds before they are asked
            await asyncio.gather(*(begin(n) for n in nodes if n not in asked))
        live = [n for n in nodes if n in asked and n not in errors]
        answers = dict(zip(live, await asyncio.gather(*(ask(n, "progress", digests=digests) for n in live),
                                                      return_exceptions=True), strict=True))
        replies: dict[str, dict[str, Any]] = {}
        for node, ans in answers.items():
            if isinstance(ans, BaseException):
                errors[node] = (ans.message if isinstance(ans, BeiranError) else "") or str(ans)
            else:
                replies[node] = ans
        rows = [_node_row(n, None if n in errors else replies.get(n), errors.get(n, "")) if n in asked
                else _waiting_row(n, items) for n in nodes]
        await emit({"event": "progress", "nodes": rows})
        if not seeding and all(r["state"] != "downloading" for r in rows):
            break
        await asyncio.sleep(TICK)
    totals: Counter[str] = Counter()
    for r in rows:
        totals.update(r["sources"])
    return {"event": "done", "nodes": rows, "failed": [r["node"] for r in rows if r["state"] != "complete"],
            "sources": dict(totals), "size": sum(i.size or 0 for i in items),
            "elapsed": round(time.monotonic() - started, 3)}
