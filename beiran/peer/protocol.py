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
    from beiran.context import DaemonContext
    from beiran.peer.calls import Caller
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


async def rpc_fetch(conn: Caller, digest: str, size: int | None = None,
                    source: dict[str, Any] | None = None) -> dict[str, Any]:
    """A peer asks this node (the blob's rendezvous owner) to fetch a cold blob from its origin.

    Returns once the origin has answered (or the download is under way); the caller then streams
    `GET /blobs/<digest>`. The fetch runs for the peer: it never delegates again, its source is
    resolved only against this node's config, it evicts nothing for the peer's claimed size, and
    it counts against the peer's caps.
    """
    if conn.uuid is None:
        raise BadRequest("hello first")
    return await serve_fetch(conn.ctx, conn.uuid, digest, size, source)


async def serve_fetch(ctx: DaemonContext, peer: str, digest: str, size: int | None,
                      source: dict[str, Any] | None) -> dict[str, Any]:
    """`rpc_fetch` for whichever way the peer asked (websocket call, or signed `POST /peer/fetch`
    above full_mesh_max): what it is told back carries no local detail."""
    try:
        return await _fetch_for(ctx, peer, digest, size, source)
    except BeiranError as exc:
        raise exc.for_peer() from None
    except Exception:
        log.exception("delegated fetch of %s failed", str(digest)[:19])
        raise UpstreamError("the fetch failed on this node") from None


async def _fetch_for(ctx: DaemonContext, peer: str, digest: str, size: int | None,
                     source: dict[str, Any] | None) -> dict[str, Any]:
    d = parse_digest(digest)
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise BadRequest("size must be a non-negative integer")
    if source is None:
        raise BadRequest("a delegated fetch names the source to fetch from")
    src = check_source(ctx, _check_source(source))  # against this node's own config, at once
    fetcher = ctx.fetcher
    charged = False if ctx.store.has(str(d)) else fetcher.admission.admit(peer, str(d), size)
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


async def call_fetch_http(ctx: DaemonContext, node: str, digest: str, size: int | None,
                          source: dict[str, Any] | None) -> dict[str, Any]:
    """`call_fetch` without a websocket (above full_mesh_max): a signed `POST /peer/fetch` to the
    owner's membership address."""
    from tornado.httpclient import AsyncHTTPClient, HTTPRequest

    base = ctx.peers.url_of(node)
    if not base:
        raise UpstreamError(f"owner {node[:8]} has no known address")
    path = "/peer/fetch"
    body = json.dumps({"digest": digest, "size": size, "source": source, "from": ctx.identity.uuid}).encode()
    headers = {"Content-Type": "application/json", **ctx.auth.headers("POST", path, body)}
    req = HTTPRequest(base + path, method="POST", body=body, headers=headers, connect_timeout=5,
                      request_timeout=30)
    try:
        resp = await AsyncHTTPClient().fetch(req, raise_error=False)
        answer = json.loads(resp.body or b"{}")
    except (OSError, ValueError, TimeoutError) as exc:
        raise UpstreamError(f"owner {node[:8]}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - tornado's own client errors (timeouts, 599)
        raise UpstreamError(f"owner {node[:8]}: {exc}") from None
    if not isinstance(answer, dict):
        raise UpstreamError(f"owner {node[:8]} answered {resp.code} without a JSON object")
    if resp.code != 200:
        raise from_wire({**answer, "status": resp.code})
    return answer


async def rpc_preheat(conn: Caller, blobs: Any = None) -> dict[str, Any]:
    from beiran import preheat

    return await preheat.rpc_preheat(conn, blobs)


async def rpc_progress(conn: Caller, digests: Any = None) -> dict[str, Any]:
    from beiran import preheat

    return await preheat.rpc_progress(conn, digests)
