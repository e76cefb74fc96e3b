"""Where the fetcher finds holders and owners when the cluster is above `full_mesh_max`.

Why a separate path: there is no full copy of every peer's holdings then, nor a websocket per
peer. Holders come from the who-has directory (one round trip to the digest's owners) and are
handed out least-loaded first (`HolderPicker`), so a popular blob's first holder is not stampeded;
a cold blob goes to its owner chain (rank 1, then 2, then 3 among live members), each asked by a
signed HTTP request, and the owner fetches it for everyone without delegating again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from beiran.context import DaemonContext
    from beiran.fetch.fetcher import FetchJob

#: owners asked in turn for a cold blob before this node goes to the origin itself
CHAIN = 3


async def candidates(ctx: DaemonContext, job: FetchJob, failed: set[str]) -> list[str]:
    """Complete holders to try, best first: the directory's answer, minus the ones that failed,
    least-loaded first."""
    skip = job.bad | failed
    holders = [h for h in await ctx.peers.cluster.holders(job.digest) if h not in skip]
    ordered: list[str] = []
    picker = ctx.peers.cluster.picker
    while holders:
        node = picker.pick(holders)
        if node is None:
            break
        picker.done(node)  # counted while a transfer runs (cluster.links_for), not for the order
        ordered.append(node)
        holders.remove(node)
    return ordered


def owner(ctx: DaemonContext, job: FetchJob, failed: set[str]) -> str | None:
    """The next owner to ask in the digest's chain; None when this node is next (it fetches)."""
    me = ctx.identity.uuid
    for node in ctx.peers.cluster.owners(job.digest):
        if node == me:
            return None
        if node not in job.bad and node not in failed:
            return node
    return None
