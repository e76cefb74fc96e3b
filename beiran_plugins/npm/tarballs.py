"""Serving a tarball to npm: a core fetch of the sha512 from the packument's integrity (peers first,
the origin once per cluster), relayed as it arrives; sha1-only versions pass through, verified.

Nothing unverified ever reaches npm complete (the core's `serve` holds the last `hold` bytes until
the blob verified; most tarballs fit whole, so a bad peer costs npm nothing). A failure after bytes
left ends the body cleanly but short: npm's integrity check fails and pacote retries once by itself,
by when the fetcher has the verified blob, while a cut connection is an ECONNRESET npm never retries.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from beiran.errors import BeiranError, NotFound, UpstreamError, VerificationError
from beiran.httpstream import stream_request
from beiran.serve import relay, serve_blob
from beiran_plugins.npm.metadata import sha1_of, sha512_of, sri

if TYPE_CHECKING:
    from beiran.handlers import BaseHandler
    from beiran_plugins.npm.plugin import NPMPlugin

TARBALL_TYPE = "application/octet-stream"


async def serve_tarball(handler: BaseHandler, plugin: NPMPlugin, name: str, file: str, head: bool) -> None:
    p, version = await plugin.packuments.any_with_version(name, file=file)
    dist = (p.manifest(version) or {}).get("dist") or {}
    digest = sha512_of(dist)
    handler.set_header("Content-Type", TARBALL_TYPE)
    if digest is None:
        sha1 = sha1_of(dist)
        if sha1 is None:
            raise UpstreamError(f"{name}@{version} has neither a sha512 integrity nor a sha1 shasum")
        await _passthrough(handler, plugin, plugin.tarball_url(p, name, version), sha1, head,
                           f"{name}@{version}")
        return
    d = str(digest)
    handler.set_header("ETag", f'"{sri(d)}"')
    store = plugin.ctx.store
    if head:
        entry = store.get(d)
        if entry is not None:
            handler.set_header("Content-Length", str(entry.size))
        handler.finish()
        return
    source = {"plugin": "npm", "package": name, "version": version}
    local = store.has(d)
    await serve_blob(handler, d, source=source, ranges="off", hold=plugin.hold, end_short=True)
    plugin.count("tarballs_local" if local else "tarballs_fetched")
    await plugin.pin(d, name, version)


async def _passthrough(handler: BaseHandler, plugin: NPMPlugin, url: str, sha1: str, head: bool,
                       what: str) -> None:
    """A version with only a sha1 shasum: from the upstream, verified by sha1, not stored or shared."""
    if head:
        handler.finish()
        return
    up = plugin.upstream
    async with stream_request(url, up.headers_for(url), ssl_ctx=up.ssl_ctx if up.is_upstream(url) else None,
                              connect_timeout=min(up.timeout, 10.0), origin=True) as resp:
        if resp.code == 404:
            raise NotFound(f"{what}: tarball not found at the upstream")
        if resp.code != 200:
            raise UpstreamError(f"{what}: upstream answered {resp.code} {resp.reason} for the tarball")

        async def verified() -> AsyncIterator[bytes]:
            h = hashlib.sha1()  # npm's legacy shasum, the only hash these versions have
            async for chunk in resp.chunks(up.timeout):
                h.update(chunk)
                yield chunk
            if h.hexdigest() != sha1:
                raise VerificationError(f"{what}: tarball does not match its sha1 shasum")
        try:
            await relay(handler, verified(), plugin.hold, end_short=True)
        except BeiranError:
            raise
        except Exception as exc:  # noqa: BLE001 - nothing was sent: a clear answer instead
            raise UpstreamError(f"{what}: {exc}") from None
    plugin.count("tarballs_passthrough")

