"""Serving a tarball to npm: a core fetch of the sha512 from the packument's integrity (peers first,
the origin once per cluster), relayed as it arrives; sha1-only versions pass through, verified.

Nothing unverified ever reaches npm complete: up to `hold` bytes are kept back until the blob is
verified (most tarballs fit, so a bad peer costs npm nothing: the fetcher retries elsewhere), and a
larger tarball is streamed with its last chunk held, so a failure ends the response short.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from tornado.iostream import StreamClosedError

from beiran.errors import BeiranError, NotFound, UpstreamError, VerificationError
from beiran.httpstream import stream_request
from beiran_plugins.npm.metadata import sha1_of, sha512_of, sri

if TYPE_CHECKING:
    from beiran.handlers import BaseHandler
    from beiran_plugins.npm.plugin import NPMPlugin

log = logging.getLogger("beiran.npm")
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
    if store.get(d) is None:
        fetcher = plugin.ctx.fetcher
        job = await fetcher.start(d, None, source)
        try:
            # the core's stream raises unless the bytes it gave are the verified blob's
            await relay(handler, fetcher.stream(d, None, source), plugin.hold)
            plugin.count("tarballs_fetched")
            await plugin.pin(d, name, version)
            return
        except _Retry:
            # nothing was sent yet: the fetcher may be retrying other sources; its final word decides
            if not job.done.done():
                await asyncio.shield(job.done)
            if (error := job.error()) is not None:
                raise error from None
    await _serve_local(handler, plugin, d)
    plugin.count("tarballs_local")
    await plugin.pin(d, name, version)


async def _serve_local(handler: BaseHandler, plugin: NPMPlugin, digest: str) -> None:
    store = plugin.ctx.store
    async with store.use(digest) as target:
        if target.size is not None:
            handler.set_header("Content-Length", str(target.size))
        try:
            async for chunk in store.read(target):
                handler.write(chunk)
                await handler.flush()
        except StreamClosedError:
            abort(handler)
            return
    handler.finish()


def abort(handler: BaseHandler) -> None:
    """End a response whose headers are gone: close the connection so the client sees it cut
    (a clean end of a chunked body would look complete), and tell Tornado it is over."""
    handler.http_connection().close()
    handler._finished = True


class _Retry(Exception):
    """The source failed before any byte was sent: the caller may still answer properly."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


async def relay(handler: BaseHandler, chunks: AsyncIterator[bytes], hold: int) -> None:
    """Send `chunks` to the client; the iterator raises if the bytes fail verification at the end.

    Small bodies are sent whole once verified (with a Content-Length); larger ones stream with the
    last chunk held back, so a client never receives a complete unverified body (a failure ends
    the body without that chunk)."""
    buf: list[bytes] = []
    size = 0
    last: bytes | None = None
    streaming = False
    try:
        async for chunk in chunks:
            if not chunk:
                continue
            if streaming:
                handler.write(last or b"")
                last = chunk
                await handler.flush()
                continue
            buf.append(chunk)
            size += len(chunk)
            if size > hold:
                streaming = True
                for c in buf[:-1]:
                    handler.write(c)
                last, buf = buf[-1], []
                await handler.flush()
    except StreamClosedError:
        abort(handler)
        return
    except Exception as exc:  # any source failure: retried if nothing was sent
        if not streaming:
            raise _Retry(exc) from exc
        log.warning("npm: %s failed after streaming started (%s); ending the response short",
                    handler.request.path, exc)
        # The body ends properly (chunked), without the held last chunk: npm's integrity check
        # fails and pacote retries once by itself ("seems to be corrupted. Trying again."), by
        # when the fetcher has the verified blob. A cut connection is an ECONNRESET that npm never
        # retries, whatever its fetch-retries. A truncated gzip fails any client that unpacks it.
        handler.finish()
        return
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
    if not streaming:
        handler.set_header("Content-Length", str(size))
        handler.finish(b"".join(buf))
    else:
        handler.finish(last or b"")


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
            await relay(handler, verified(), plugin.hold)
        except _Retry as exc:
            cause = exc.cause
            raise cause if isinstance(cause, BeiranError) else UpstreamError(f"{what}: {cause}") from None
    plugin.count("tarballs_passthrough")

