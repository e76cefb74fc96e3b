"""RPC handlers (`rpc_*`, run when a peer calls) and requests (`call_*`, to call a peer).

Kept small and explicit, like kademlia's protocol module: every remote entry point is here.
A peer is untrusted: what it may make this node do is capped (fetch/admission.py), and what it is
told back is typed and carries no local detail (paths, disk figures): `BeiranError.for_peer()`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any

from beiran.errors import BadRequest, BeiranError, UpstreamError, from_wire
from beiran.fetch.origins import check_source
from beiran.store.digest import parse_digest

if TYPE_CHECKING:
    from beiran.peer.connection import PeerConnection

log = logging.getLogger("beiran.peer")
MAX_SOURCE_JSON = 4096
#: how long the owner waits for the origin's first answer before it says "downloading" (the
#: caller's RPC timeout is 30 s): an origin's refusal then travels back as a typed error
ANSWER_WAIT = 20.0


def _check_source(source: Any) -> dict[str, Any]:
    if not isinstance(source, dict) or not isinstance(source.get("plugin"), str):
        raise BadRequest("source must be an object naming a plugin")
    if len(json.dumps(source)) > MAX_SOURCE_JSON:
        raise BadRequest("source description too large")
    return source


async def rpc_fetch(conn: PeerConnection, digest: str, size: int | None = None,
                    source: dict[str, Any] | None = None) -> dict[str, Any]:
    """A peer asks this node (the blob's rendezvous owner) to fetch a cold blob from its origin.

    Returns once the origin has answered (or the download is under way); the caller then streams
    `GET /blobs/<digest>`. The fetch runs for the peer: it never delegates again, its source is
    resolved only against this node's config, it evicts nothing for the peer's claimed size, and
    it counts against the peer's caps.
    """
    try:
        return await _fetch_for(conn, digest, size, source)
    except BeiranError as exc:
        raise exc.for_peer() from None
    except Exception:
        log.exception("delegated fetch of %s failed", str(digest)[:19])
        raise UpstreamError("the fetch failed on this node") from None


async def _fetch_for(conn: PeerConnection, digest: str, size: int | None,
                     source: dict[str, Any] | None) -> dict[str, Any]:
    peer = conn.uuid
    if peer is None:
        raise BadRequest("hello first")
    d = parse_digest(digest)
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise BadRequest("size must be a non-negative integer")
    if source is None:
        raise BadRequest("a delegated fetch names the source to fetch from")
    src = check_source(conn.ctx, _check_source(source))  # against this node's own config, at once
    fetcher = conn.ctx.fetcher
    charged = False if conn.ctx.store.has(str(d)) else fetcher.admission.admit(peer, str(d), size)
    try:
        job = await fetcher.start(str(d), size, src, for_peer=peer, delegated=True)
    except BaseException:
        if charged:
            fetcher.admission.release(peer, str(d))
        raise
    if charged:
        fetcher.admission.hold_until_done(peer, job)
    if not job.done.done():
        answered = asyncio.ensure_future(job.answered.wait())
        try:
            waiters: list[asyncio.Future[Any]] = [answered, job.done]
            await asyncio.wait(waiters, timeout=ANSWER_WAIT, return_when=asyncio.FIRST_COMPLETED)
        finally:
            answered.cancel()
    if job.failed:
        exc = job.done.exception()
        raise exc if isinstance(exc, BeiranError) else UpstreamError("the fetch failed on this node")
    return {"state": "complete" if job.done.done() else "downloading", "size": job.size}


async def call_fetch(conn: PeerConnection, digest: str, size: int | None,
                     source: dict[str, Any] | None) -> dict[str, Any]:
    """Ask the owner to fetch; its refusal comes back as the typed error it sent (a NotFound
    stays a NotFound: the origin has no such blob, the owner is not at fault)."""
    try:
        return await conn.call("fetch", timeout=30.0, digest=digest, size=size, source=source)
    except BeiranError as exc:
        if type(exc) is BeiranError:  # as the connection builds it from the wire
            raise from_wire({"error": exc.code, "message": exc.message, "status": exc.status}) from None
        raise


async def rpc_preheat(conn: PeerConnection, blobs: Any = None) -> dict[str, Any]:
    from beiran import preheat

    return await preheat.rpc_preheat(conn, blobs)


async def rpc_progress(conn: PeerConnection, digests: Any = None) -> dict[str, Any]:
    from beiran import preheat

    return await preheat.rpc_progress(conn, digests)
