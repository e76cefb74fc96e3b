"""The registry mirror at /v2/ (OCI distribution spec, pull side).

Manifests are served byte for byte with their media type and digest; blobs stream as they arrive
from peers or the origin, with Range. Every error is the spec's JSON body; a miss is a quick 404
so runtimes fall through to the upstream.
"""

from __future__ import annotations

from typing import Any

import tornado.web

from beiran import offline
from beiran.access import Access, check_blob_access
from beiran.errors import BeiranError
from beiran.handlers import BaseHandler
from beiran.serve import serve_blob as core_serve_blob
from beiran.store.digest import parse_digest
from beiran_plugins.docker.errors import BlobUnknown, oci_body, oci_code
from beiran_plugins.docker.reference import (
    upstream_repository,
    validate_registry,
    validate_repository,
    validate_tag,
)


class OCIHandler(BaseHandler):
    """Package clients only (client_cidrs); errors in the `{"errors": [...]}` shape."""

    access = Access.CLIENT
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
        check_blob_access(self, digest)
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
        await serve_blob(self, d, self.plugin.mirror.source(registry, repository, "blob"), head)


async def serve_blob(handler: BaseHandler, digest: str, source: dict[str, Any] | None, head: bool) -> None:
    """Registry-style blob response: the core serves it, stored or as it arrives; a HEAD for a
    blob not here is answered from what is known of its size, without fetching it."""
    ctx, plugin = handler.ctx, handler.plugin
    handler.set_header("Content-Type", "application/octet-stream")
    handler.set_header("Docker-Content-Digest", digest)
    handler.set_header("Etag", f'"{digest}"')
    size = None if ctx.store.has(digest) else plugin.mirror.descriptor_size(digest)
    if head and not ctx.store.has(digest) and ctx.store.writing(digest) is None:
        check_blob_access(handler, digest)
        if size is None:
            size = next((p.blobs[digest][1] for p in ctx.availability.peers.values()
                         if p.online and digest in p.blobs and p.blobs[digest][1] is not None), None)
        if size is None and source is not None:
            size = await plugin.upstream.head_blob(source["registry"], source["repository"], digest)
        if size is None:
            raise BlobUnknown(f"blob {digest[:19]} is not known")
        handler.set_header("Accept-Ranges", "bytes")
        handler.set_header("Content-Length", str(size))
        handler.finish()
        return
    await core_serve_blob(handler, digest, size=size, source=source, head=head)


ROUTES = [
    (r"/v2/?", V2RootHandler),
    (r"/v2/(.+)/manifests/([^/]+)", ManifestHandler),
    (r"/v2/(.+)/blobs/([^/]+)", BlobHandler),
    (r"/v2/.*", UnsupportedHandler),
]
