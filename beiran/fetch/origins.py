"""Turning a `source` into origin bytes. A source is data a plugin resolves with its own configured
upstreams (never a URL a peer could make this node request). Core resolves one kind itself:
`{"plugin": "origin", "name": N, "path": P}` against `[origins] N = "http://..."`, for plain files."""

from __future__ import annotations

import posixpath
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from beiran.errors import BadRequest, NotFound, UpstreamError
from beiran.httpstream import stream_request
from beiran.plugin import BasePackagePlugin, OriginStream

if TYPE_CHECKING:
    from beiran.context import DaemonContext


def source_key(source: dict[str, Any]) -> str:
    """What a node must have to resolve this source ("docker", "origin:test")."""
    if source.get("plugin") == "origin":
        return f"origin:{source.get('name')}"
    return str(source.get("plugin"))


def local_source_keys(ctx: DaemonContext) -> list[str]:
    keys = [p.name for p in ctx.plugins.of_kind("package")] if ctx.plugins else []
    return keys + [f"origin:{n}" for n in ctx.config.origins]


async def http_origin(url: str, offset: int, headers: dict[str, str] | None = None,
                      ssl_ctx: Any = None, what: str = "origin") -> OriginStream:
    """GET `url` from `offset`, coping with servers that ignore Range; errors become UpstreamError."""
    hdrs = dict(headers or {})
    if offset:
        hdrs["Range"] = f"bytes={offset}-"
    cm = stream_request(url, hdrs, ssl_ctx=ssl_ctx, origin=True)
    resp = await cm.__aenter__()
    if resp.code == 404:
        await cm.__aexit__(None, None, None)
        raise NotFound(f"{what}: not found at the origin")
    if resp.code not in (200, 206):
        await cm.__aexit__(None, None, None)
        raise UpstreamError(f"{what}: origin answered {resp.code} {resp.reason}")
    return stream_from_response(resp, cm, offset)


def stream_from_response(resp: Any, cm: Any, offset: int, idle_timeout: float = 30.0) -> OriginStream:
    """An OriginStream over an open 200/206 response to a request for bytes from `offset`.

    Servers that ignore Range answer 200 with the whole blob: the bytes before `offset` are
    skipped. `cm` (the request's context manager) is exited when the stream ends."""
    skip = offset if (offset and resp.code == 200) else 0
    length = resp.headers.get("Content-Length") or ""
    size = int(length) + (offset if resp.code == 206 else 0) if length.isdigit() else None

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal skip
        try:
            async for chunk in resp.chunks(idle_timeout):
                if skip:
                    if len(chunk) <= skip:
                        skip -= len(chunk)
                        continue
                    chunk, skip = chunk[skip:], 0
                yield chunk
        finally:
            await cm.__aexit__(None, None, None)

    return OriginStream(chunks(), size=size, close=resp.close)


def check_source(ctx: DaemonContext, source: Any) -> dict[str, Any]:
    """A source from a peer, checked now against what this node itself can resolve (its package
    plugins' settings, its `[origins]`), so a bad one is refused before any work starts."""
    if not isinstance(source, dict) or not isinstance(source.get("plugin"), str):
        raise BadRequest("source must be an object naming a plugin")
    params = {k: v for k, v in source.items() if k != "plugin"}
    if source["plugin"] == "origin":
        if str(params.get("name")) not in ctx.config.origins:
            raise BadRequest(f"origin {str(params.get('name'))[:40]!r} is not configured on this node")
        return source
    plugin = ctx.plugins.get(source["plugin"]) if ctx.plugins else None
    if not isinstance(plugin, BasePackagePlugin):
        raise BadRequest(f"no package plugin {source['plugin'][:40]!r} on this node")
    return {"plugin": plugin.name, **plugin.validate_source(params, from_peer=True)}


async def open_origin(ctx: DaemonContext, source: dict[str, Any], digest: str, offset: int, *,
                      from_peer: bool) -> OriginStream:
    """Open the origin a source names. `from_peer`: the source came in a peer's request, so the
    plugin resolves it only against this node's config and without credentials."""
    plugin_name = source.get("plugin")
    params = {k: v for k, v in source.items() if k != "plugin"}
    if plugin_name == "origin":
        base = ctx.config.origins.get(str(params.get("name")))
        if not base:
            raise BadRequest(f"origin {params.get('name')!r} is not configured on this node")
        path = "/" + str(params.get("path", "")).lstrip("/")
        clean = posixpath.normpath(path)
        if ".." in path.split("/") or clean != path:
            raise BadRequest(f"origin path {path!r} is not a plain path")
        return await http_origin(base.rstrip("/") + quote(clean), offset, what=f"origin {params['name']}")
    plugin = ctx.plugins.get(str(plugin_name)) if ctx.plugins else None
    if not isinstance(plugin, BasePackagePlugin):
        raise BadRequest(f"no package plugin {plugin_name!r} on this node to reach the origin")
    params = plugin.validate_source(params, from_peer=from_peer)
    return await plugin.open_origin(params, digest, offset, from_peer=from_peer)
