"""`beiran docker preheat REF --nodes ...`: every chosen node fetches every blob of an image now.

This node resolves the image once, then asks each chosen peer to fetch the blobs through its own
fetcher (the core's preheat RPC), and reports per-node progress until all are done or failed."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from beiran.errors import BadRequest, BeiranError
from beiran_plugins.docker.pull import resolve_image
from beiran_plugins.docker.reference import Reference

if TYPE_CHECKING:
    from beiran_plugins.docker.plugin import DockerPlugin

Emit = Callable[[dict[str, Any]], Awaitable[None]]
TICK = 0.5


def _targets(plugin: DockerPlugin, nodes: Any) -> list[str]:
    me, online = plugin.ctx.identity.uuid, plugin.ctx.peers.online()
    if nodes in (None, "all", ["all"]):
        return [me, *sorted(online)]
    if not isinstance(nodes, list) or not nodes or not all(isinstance(n, str) for n in nodes):
        raise BadRequest('nodes must be "all" or a list of node UUIDs')
    out = []
    for n in nodes:
        match = [u for u in [me, *online] if u == n or (len(n) >= 8 and u.startswith(n))]
        if len(match) != 1:
            raise BadRequest(f"{n[:40]} is not this node or an online peer (see `beiran node list`)")
        out.append(match[0])
    return list(dict.fromkeys(out))


def _node_progress(node: str, answer: dict[str, Any] | None, error: str) -> dict[str, Any]:
    if error:
        return {"node": node, "state": "failed", "error": error, "bytes": 0, "total": 0, "blobs": 0, "done": 0}
    items = list((answer or {}).values())
    failed = [i for i in items if i.get("state") == "failed"]
    done = sum(1 for i in items if i.get("state") == "complete")
    state = "failed" if failed else "complete" if done == len(items) else "downloading"
    sources: Counter[str] = Counter()
    for i in items:
        sources.update({k: int(v) for k, v in (i.get("sources") or {}).items() if isinstance(v, (int, float))})
    return {"node": node, "state": state, "error": failed[0].get("error", "") if failed else "",
            "bytes": sum(int(i.get("bytes") or 0) for i in items),
            "total": sum(int(i.get("total") or 0) for i in items),
            "blobs": len(items), "done": done, "sources": dict(sources)}


async def preheat(plugin: DockerPlugin, ref: Reference, platform: str | None, nodes: Any,
                  emit: Emit) -> dict[str, Any]:
    ctx = plugin.ctx
    started = time.monotonic()
    targets = _targets(plugin, nodes)
    digest, _, parsed, plat, _ = await resolve_image(plugin, ref, platform)
    unique = list({b.digest: b for b in parsed.blobs}.values())
    blobs = [{"digest": b.digest, "size": b.size} for b in unique]
    digests = [b.digest for b in unique]
    source = plugin.mirror.source(ref.registry, ref.repository, "blob")
    await emit({"event": "manifest", "ref": str(ref), "digest": digest, "platform": plat, "blobs": blobs,
                "nodes": targets})

    errors: dict[str, str] = {}

    async def ask(node: str, method: str, **params: Any) -> Any:
        if node == ctx.identity.uuid:
            if method == "preheat":
                ctx.preheater.start([(b["digest"], b["size"]) for b in blobs], source)
                return {}
            return ctx.preheater.progress(digests)
        conn = ctx.peers.conn(node)
        if conn is None:
            raise BeiranError(f"node {node[:8]} went offline")
        return await conn.call(method, timeout=30.0, **params)

    async def start(node: str) -> None:
        try:
            await ask(node, "preheat", blobs=blobs, source=source)
        except BeiranError as exc:
            errors[node] = exc.message

    await asyncio.gather(*(start(n) for n in targets))
    while True:
        answers = await asyncio.gather(*(ask(n, "progress", digests=digests) for n in targets if n not in errors),
                                       return_exceptions=True)
        live = [n for n in targets if n not in errors]
        for node, ans in zip(live, answers, strict=True):
            if isinstance(ans, BaseException):
                errors[node] = getattr(ans, "message", str(ans))
        rows = [_node_progress(n, None if n in errors else ans, errors.get(n, ""))
                for n, ans in zip(targets, _align(targets, live, answers), strict=True)]
        await emit({"event": "progress", "nodes": rows})
        if all(r["state"] != "downloading" for r in rows):
            break
        await asyncio.sleep(TICK)
    totals: Counter[str] = Counter()
    for r in rows:
        totals.update(r.get("sources") or {})
    return {"event": "done", "ref": str(ref), "digest": digest, "platform": plat, "nodes": rows,
            "failed": [r["node"] for r in rows if r["state"] != "complete"],
            "sources": dict(totals), "size": sum(b["size"] or 0 for b in blobs),
            "elapsed": round(time.monotonic() - started, 3)}


def _align(targets: list[str], live: list[str], answers: list[Any]) -> list[Any]:
    by_node = dict(zip(live, answers, strict=True))
    return [by_node.get(n) for n in targets]
