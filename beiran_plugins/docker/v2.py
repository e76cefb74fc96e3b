"""The registry mirror at /v2/ (OCI distribution spec, pull side).

Manifests are served byte for byte with their media type and digest; blobs stream as they arrive
from peers or the origin, with Range. Every error is the spec's JSON body; a miss is a quick 404
so runtimes fall through to the upstream.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import time
from typing import Any

import tornado.web
from tornado.iostream import StreamClosedError

from beiran import offline
from beiran.errors import BeiranError
from beiran.handlers import BaseHandler
from beiran.peer.serving import detach_socket, parse_range, sendfile_range
from beiran.store.blobstore import BlobEntry
from beiran.store.digest import parse_digest
from beiran.store.writer import BlobWriter
from beiran_plugins.docker.errors import RegistryUnavailable, oci_body, oci_code
from beiran_plugins.docker.reference import (
    upstream_repository,
    validate_registry,
    validate_repository,
    validate_tag,
)

log = logging.getLogger("beiran.docker")
SENDFILE_MIN = 1 << 20
STREAM_CHUNK = 4 << 20


class OCIHandler(BaseHandler):
    """Package clients only (client_cidrs); errors in the `{"errors": [...]}` shape."""

    clients_only = True
    not_found_code = "NAME_UNKNOWN"

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("Docker-Distribution-API-Version", "registry/2.0")

    def error_body(self, status: int, exc: BaseException | None) -> dict[str, Any]:
        if isinstance(exc, BeiranError):
            message = exc.message
        elif isinstance(exc, tornado.web.HTTPError):
            message = exc.log_message or self._reason
        else:
            message = "internal error (see the daemon log)" if status >= 500 else self._reason
        return oci_body(oci_code(exc, status, self.not_found_code), message)

    def check_private(self, digest: str) -> None:
        """Blobs restricted to nodes that proved registry access (k8s private images) go only to
        this machine's own runtime (loopback), never to other clients in client_cidrs."""
        if not self.ctx.store.access_policies or self.is_unix_socket():
            return
        if not ipaddress.ip_address(self.request.remote_ip or "").is_loopback:
            self.ctx.store.check_access(digest, None)

    def target(self, name: str) -> tuple[str, str]:
        """(registry, upstream repository) from containerd's `?ns=`, else a registry's `prefix` as the
        path's first segment (`/v2/<prefix>/<repository>/...`), else the default registry."""
        ns = self.get_query_argument("ns", None)
        if ns:
            registry = validate_registry(ns)
        else:
            first, _, rest = name.partition("/")
            registry = self.plugin.upstream.prefixes.get(first, "") if rest else ""
            if registry:
                name = rest
            else:
                registry = self.plugin.default_registry
        return registry, upstream_repository(registry, validate_repository(name))


class V2RootHandler(OCIHandler):
    def get(self) -> None:
        self.write_json({})

    def head(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish()


class UnsupportedHandler(OCIHandler):
    """Everything else under /v2/ (tags/list, catalog, uploads): this mirror only pulls."""

    def prepare(self) -> None:
        super().prepare()
        from beiran_plugins.docker.errors import Unsupported

        raise Unsupported(f"{self.request.method} {self.request.path[:100]} is not supported by this mirror "
                          "(pull only)")


class ManifestHandler(OCIHandler):
    not_found_code = "MANIFEST_UNKNOWN"

    async def head(self, name: str, reference: str) -> None:
        await self.get(name, reference, head=True)

    async def get(self, name: str, reference: str, head: bool = False) -> None:
        registry, repository = self.target(name)
        mirror = self.plugin.mirror
        tag = None
        media_type, size = "", None
        if ":" in reference:  # tags cannot hold a colon: a digest (validated here)
            digest = str(parse_digest(reference))
        else:
            tag = validate_tag(reference)
            info = await mirror.resolve_tag(registry, repository, tag, self.request.headers.get_list("Accept"))
            digest, media_type, size = info.digest, info.media_type, info.size
            if info.offline:
                self.set_header(offline.HEADER, info.offline)
        self.check_private(digest)
        known = mirror.known.get(digest)
        if head and (known or (size is not None and media_type)):
            media_type, size = known if known else (media_type, size)
            self._headers_for(digest, media_type, size)
            self.finish()
            return
        data, media_type = await mirror.manifest(registry, repository, digest, media_type, size)
        self._headers_for(digest, media_type, len(data))
        if head:
            self.finish()
            return
        parsed = await mirror.record(registry, repository, digest, data, media_type, tag=tag)
        self.finish(data)
        if parsed is not None:
            mirror.prefetch(registry, repository, parsed)

    def _headers_for(self, digest: str, media_type: str, size: int | None) -> None:
        self.set_header("Content-Type", media_type or "application/octet-stream")
        self.set_header("Docker-Content-Digest", digest)
        self.set_header("Etag", f'"{digest}"')
        if size is not None:
            self.set_header("Content-Length", str(size))


class BlobHandler(OCIHandler):
    not_found_code = "BLOB_UNKNOWN"

    async def head(self, name: str, digest: str) -> None:
        await self.get(name, digest, head=True)

    async def get(self, name: str, digest: str, head: bool = False) -> None:
        registry, repository = self.target(name)
        d = str(parse_digest(digest))
        self.check_private(d)
        await serve_blob(self, d, self.plugin.mirror.source(registry, repository, "blob"), head)


async def wait_first_bytes(job: Any, timeout: float) -> None:
    """Until the download has bytes (or ended): a failing origin becomes an error before headers go."""
    deadline = time.monotonic() + timeout
    delay = 0.002
    while not job.done.done():
        writer = job.writer
        if writer is not None and writer.available > 0:
            return
        if time.monotonic() > deadline:
            raise RegistryUnavailable(f"no data for blob {job.digest[:19]} after {timeout:.0f}s")
        await asyncio.wait([job.done], timeout=delay)
        delay = min(delay * 2, 0.05)
    if job.failed:
        raise job.done.exception()


async def serve_blob(handler: BaseHandler, digest: str, source: dict[str, Any] | None, head: bool) -> None:
    """Registry-style blob response from the store, or streamed through the fetcher as it arrives."""
    ctx, plugin = handler.ctx, handler.plugin
    entry = ctx.store.get(digest)
    size = entry.size if entry else plugin.mirror.descriptor_size(digest)
    if head:
        if size is None:
            size = next((p.blobs[digest][1] for p in ctx.availability.peers.values()
                         if p.online and digest in p.blobs and p.blobs[digest][1] is not None), None)
        if size is None and source is not None:
            size = await plugin.upstream.head_blob(source["registry"], source["repository"], digest)
        if size is None:
            from beiran_plugins.docker.errors import BlobUnknown

            raise BlobUnknown(f"blob {digest[:19]} is not known")
        _blob_headers(handler, digest, size, None)
        handler.finish()
        return
    if entry is None:
        job = await ctx.fetcher.start(digest, size, source)
        await wait_first_bytes(job, ctx.config.fetch.peer_timeout * 2)
        size = job.size
    rng = parse_range(handler.request.headers.get("Range"), size) if size is not None else None
    start, end = rng if rng else (0, size)
    _blob_headers(handler, digest, size, rng)
    # A client never receives the last byte of a blob still downloading before it is verified
    # (nor waits for the store's fsync): a body that failed verification always arrives short.
    async with ctx.store.use(digest) as target:
        if end is not None and end - start >= SENDFILE_MIN and not handler.is_unix_socket():
            await _sendfile(handler, target, start, end)
            return
        sent, held = 0, b""
        try:
            async for chunk in ctx.store.read(target, start, end, chunk_size=STREAM_CHUNK,
                                              timeout=ctx.config.fetch.peer_timeout):
                if held:
                    handler.write(held)
                    sent += len(held)
                    await handler.flush()
                held = chunk
            if isinstance(target, BlobWriter):
                await _verified(target, ctx.config.fetch.peer_timeout * 2)
        except StreamClosedError:
            return
        except Exception as exc:  # noqa: BLE001 - headers are gone: all we can do is cut the body
            log.info("serving blob %s stopped at byte %d: %s", digest[:19], start + sent, exc)
            handler.http_connection().close()
            return
    handler.finish(held)


async def _verified(writer: BlobWriter, timeout: float) -> None:
    """Until the writer's bytes matched their digest; raises if the download failed instead."""
    verified = getattr(writer, "verified", writer.done)
    await asyncio.wait([verified, writer.done], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    if verified.done() and not verified.cancelled() and verified.exception() is None:
        return
    if writer.failed:
        raise writer.error or RegistryUnavailable(f"blob {writer.digest.short}: download failed")
    raise RegistryUnavailable(f"blob {writer.digest.short}: not verified after {timeout:.0f}s")


def _blob_headers(handler: BaseHandler, digest: str, size: int | None, rng: tuple[int, int | None] | None) -> None:
    handler.set_header("Content-Type", "application/octet-stream")
    handler.set_header("Docker-Content-Digest", digest)
    handler.set_header("Etag", f'"{digest}"')
    handler.set_header("Accept-Ranges", "bytes")
    if rng:
        start, end = rng
        handler.set_status(206)
        handler.set_header("Content-Range", f"bytes {start}-{(end or 0) - 1}/{size}")
        handler.set_header("Content-Length", str((end or 0) - start))
    elif size is not None:
        handler.set_header("Content-Length", str(size))


async def _sendfile(handler: BaseHandler, target: BlobEntry | BlobWriter, start: int, end: int) -> None:
    """Headers through Tornado, then the body with sendfile(2) off the event loop; for a blob still
    downloading, what has arrived as it arrives, and the last byte once the blob is verified."""
    ctx = handler.ctx
    loop = asyncio.get_running_loop()
    timeout = ctx.config.fetch.peer_timeout
    sock = await detach_socket(handler, timeout)
    fh = None
    try:
        fh = await loop.run_in_executor(ctx.io_executor, _open, ctx.store, target)
        if isinstance(target, BlobEntry):
            await loop.run_in_executor(ctx.io_executor, sendfile_range, sock, fh.fileno(), start, end - start,
                                       timeout)
            return
        pos, last = start, end - 1
        while pos < last:
            if target.available <= pos:
                if target.done.done():
                    raise RegistryUnavailable(f"blob {target.digest.short} ended at byte {target.available}")
                await target.wait_for_growth(pos, timeout)
            upto = min(target.available, last)
            if upto > pos:
                pos += await loop.run_in_executor(ctx.io_executor, sendfile_range, sock, fh.fileno(), pos,
                                                  upto - pos, timeout)
        await _verified(target, timeout * 2)
        tail = await loop.run_in_executor(ctx.io_executor, os.pread, fh.fileno(), end - last, last)
        await loop.run_in_executor(ctx.io_executor, sock.sendall, tail)
    except (OSError, BeiranError) as exc:
        log.info("sending blob %s stopped: %s", str(target.digest)[:19], exc)
    finally:
        sock.close()
        if fh is not None:
            fh.close()


def _open(store: Any, target: BlobEntry | BlobWriter) -> Any:
    """The blob's file; a download committed meanwhile has moved from its temp file to the store."""
    if isinstance(target, BlobEntry):
        return open(store.file_of(target), "rb")
    try:
        return open(target.tmp_path, "rb")
    except FileNotFoundError:
        return open(store.path_for(target.digest), "rb")


ROUTES = [
    (r"/v2/?", V2RootHandler),
    (r"/v2/(.+)/manifests/([^/]+)", ManifestHandler),
    (r"/v2/(.+)/blobs/([^/]+)", BlobHandler),
    (r"/v2/.*", UnsupportedHandler),
]
