"""RPC handlers (`rpc_*`, run when a peer calls) and requests (`call_*`, to call a peer).

Kept small and explicit, like kademlia's protocol module: every remote entry point is here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from beiran.errors import BadRequest
from beiran.store.digest import parse_digest

if TYPE_CHECKING:
    from beiran.peer.connection import PeerConnection

MAX_SOURCE_JSON = 4096


def _check_source(source: Any) -> dict[str, Any]:
    import json

    if not isinstance(source, dict) or not isinstance(source.get("plugin"), str):
        raise BadRequest("source must be an object naming a plugin")
    if len(json.dumps(source)) > MAX_SOURCE_JSON:
        raise BadRequest("source description too large")
    return source


async def rpc_fetch(conn: PeerConnection, digest: str, size: int | None = None,
                    source: dict[str, Any] | None = None) -> dict[str, Any]:
    """A peer asks this node (the blob's rendezvous owner) to fetch a cold blob from its origin.

    Returns as soon as the download has started; the caller streams `GET /blobs/<digest>`.
    """
    d = parse_digest(digest)
    if size is not None and (not isinstance(size, int) or size < 0):
        raise BadRequest("size must be a non-negative integer")
    src = _check_source(source) if source is not None else None
    fetcher = conn.ctx.fetcher
    job = await fetcher.start(str(d), size, src, delegated=True)
    return {"state": "complete" if job.done.done() and not job.failed else "downloading",
            "size": job.size}


async def rpc_ping(conn: PeerConnection) -> dict[str, Any]:
    return {"uuid": conn.ctx.identity.uuid}


async def call_fetch(conn: PeerConnection, digest: str, size: int | None,
                     source: dict[str, Any] | None) -> dict[str, Any]:
    return await conn.call("fetch", timeout=30.0, digest=digest, size=size, source=source)


async def rpc_preheat(conn: PeerConnection, blobs: Any = None) -> dict[str, Any]:
    from beiran import preheat

    return await preheat.rpc_preheat(conn, blobs)


async def rpc_progress(conn: PeerConnection, digests: Any = None) -> dict[str, Any]:
    from beiran import preheat

    return await preheat.rpc_progress(conn, digests)
