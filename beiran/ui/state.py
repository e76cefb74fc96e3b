"""What the console shows, in one JSON document: nodes, holdings, transfers, bytes by source.

Built from what the node already tracks (availability, the fetcher's jobs, the metrics); peer claims
shown here (hostnames, URLs, sizes) are bounded strings and numbers, rendered as text by the page.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from beiran import __version__
from beiran.models.node import Node

if TYPE_CHECKING:
    from beiran.context import DaemonContext

MAX_TRANSFERS = 200


def _counter(ctx: DaemonContext, name: str) -> dict[str, float]:
    """A counter's totals by their first label value (`beiran_fetch_bytes` -> by source; "" when
    the counter has no label)."""
    out: dict[str, float] = {}
    for metric in ctx.metrics.registry.collect():
        if metric.name != name:
            continue
        for s in metric.samples:
            if s.name.endswith("_total"):
                out[next(iter(s.labels.values()), "")] = s.value
    return out


def _source_label(source: dict[str, Any] | None) -> str:
    """A short human name for a fetch's source: plugin and the package it is part of."""
    if not source:
        return ""
    plugin = str(source.get("plugin", ""))
    what = next((str(source[k]) for k in ("repository", "name", "package", "path") if source.get(k)), "")
    return f"{plugin} {what}".strip()[:160]


def transfers(ctx: DaemonContext) -> list[dict[str, Any]]:
    out = []
    for job in list(ctx.fetcher.jobs.values())[:MAX_TRANSFERS]:
        p = job.progress()
        writer = job.writer
        p["from"] = (writer.source if writer is not None else "") or ""
        p["what"] = _source_label(job.source)
        out.append(p)
    return out


async def nodes(ctx: DaemonContext) -> list[dict[str, Any]]:
    rows = await ctx.run_db(lambda: [n.to_dict() for n in Node.select()])
    me = ctx.identity.uuid
    holdings = ctx.availability.peers
    out = [{"uuid": me, "hostname": ctx.identity.hostname, "url": ctx.identity.url, "status": "self",
            "version": __version__, "plugins": ctx.identity.plugins, "blobs": len(ctx.store.entries),
            "bytes": ctx.store.total_size(), "self": True}]
    for n in sorted(rows, key=lambda r: r["url"]):
        if n["uuid"] == me:
            continue
        held = holdings.get(n["uuid"])
        blobs = held.blobs if held is not None else {}
        out.append({"uuid": n["uuid"], "hostname": n["hostname"], "url": n["url"],
                    "status": ctx.peers.calls.status_of(n["uuid"]), "version": n["version"],
                    "plugins": n["plugins"], "blobs": sum(1 for s, _ in blobs.values() if s == "c"),
                    "downloading": sum(1 for s, _ in blobs.values() if s != "c"),
                    "bytes": sum(size or 0 for s, size in blobs.values() if s == "c"),
                    "last_seen": n["last_seen"]})
    listed = {row["uuid"] for row in out}
    for m in ctx.peers.cluster.members() if ctx.peers.cluster.swim else []:  # known by membership only
        if m["uuid"] not in listed:
            out.append({"uuid": m["uuid"], "hostname": "", "url": m["url"],
                        "status": ctx.peers.calls.status_of(m["uuid"]), "version": "", "plugins": [],
                        "blobs": 0, "downloading": 0, "bytes": 0, "last_seen": None})
    return out


async def state(ctx: DaemonContext, panels: list[dict[str, str]]) -> dict[str, Any]:
    by_source = {k: int(v) for k, v in _counter(ctx, "beiran_fetch_bytes").items()}
    served = int(_counter(ctx, "beiran_served_bytes").get("", 0))
    return {
        "time": time.time(),
        "node": {"uuid": ctx.identity.uuid, "hostname": ctx.identity.hostname, "url": ctx.identity.url,
                 "version": __version__, "uptime": round(time.time() - ctx.identity.started, 1)},
        "nodes": await nodes(ctx),
        "transfers": transfers(ctx),
        "bytes": {"by_source": by_source, "served_to_peers": served,
                  # every byte a client got from this node's store or a peer is a byte the WAN did not carry
                  "saved": by_source.get("local", 0) + by_source.get("peer", 0)},
        "plugins": ctx.plugins.to_list(),
        "panels": panels,
    }
