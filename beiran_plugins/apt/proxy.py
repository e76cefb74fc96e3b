"""The proxy listener apt talks to: index files pass through byte for byte, .debs come from the
cluster by digest. Errors go back as an HTTP status whose reason phrase carries the message, since
that is the text apt prints ("E: Failed to fetch ... 403 <reason>")."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

import tornado.web
from tornado.iostream import StreamClosedError

from beiran.access import Access
from beiran.errors import BeiranError, NotFound, UpstreamError
from beiran.handlers import BaseHandler
from beiran.httpstream import stream_request
from beiran.serve import serve_blob
from beiran_plugins.apt import usage
from beiran_plugins.apt.archive import Blob
from beiran_plugins.apt.indexes import CachedIndex, not_modified
from beiran_plugins.apt.pipeline import waiting_uris
from beiran_plugins.apt.urls import MIRROR_USAGE, Kind, Target, parse_request

if TYPE_CHECKING:
    from beiran_plugins.apt.plugin import AptPlugin

log = logging.getLogger("beiran.apt")
PING_PATH = "/_beiran/ping"
DEB_TYPES = {".deb": "application/vnd.debian.binary-package", ".udeb": "application/vnd.debian.binary-package"}


class MethodNotAllowed(BeiranError):
    status, code = 405, "method_not_allowed"


class ProxyHandler(BaseHandler):
    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT")
    access = Access.CLIENT
    plugin: AptPlugin

    def set_default_headers(self) -> None:
        self.set_header("Server", "beiran-apt")
        self.set_header("Via", "1.1 beiran")

    def compute_etag(self) -> str | None:
        """None: Tornado's ETag is a SHA-1 of the body still buffered at finish(), here each whole
        .deb (held back until verified): a second hash per file that apt never asks for."""
        return None

    # -- errors ----------------------------------------------------------------------------------
    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, BeiranError):
            body = exc.to_dict()
            status_code = exc.status
        elif isinstance(exc, tornado.web.HTTPError):
            body = {"error": "error", "message": exc.log_message or self._reason}
        else:
            body = {"error": "internal_error", "message": "internal error (see the daemon log)"}
        reason = "Beiran: " + " ".join(str(body["message"]).split())
        reason = reason.encode("latin-1", "replace").decode("latin-1")[:300]
        self.set_status(status_code, reason=reason)
        self.clear_header("Content-Range")
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body) + "\n")

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, BeiranError):
            log.info("apt proxy %s %s -> %d %s", self.request.method, self.request.uri[:200], value.status,
                     value.message)
        else:
            super().log_exception(typ, value, tb)

    def _refuse(self, *_: str) -> None:
        if self.request.method == "CONNECT":
            raise MethodNotAllowed(f"CONNECT (HTTPS tunnelling) is not supported by the Beiran apt proxy: "
                                   f"for https:// sources {MIRROR_USAGE}")
        raise MethodNotAllowed(f"{self.request.method} is not supported: the apt proxy answers GET only")

    post = put = delete = patch = options = head = connect = _refuse

    # -- GET -------------------------------------------------------------------------------------
    async def get(self, *_: str) -> None:
        uri = self.request.uri or ""
        if uri == PING_PATH:
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps({"beiran": "apt-proxy", "uuid": self.ctx.identity.uuid}))
            return
        if uri == "/":  # a detector's probe or a browser (apt always names a file)
            self.set_status(usage.STATUS, reason=usage.REASON)
            self.set_header("Content-Type", "text/html; charset=utf-8")
            self.finish(usage.usage_page(self.ctx.identity.uuid, self.plugin.port))
            return
        target = parse_request(uri, self.plugin.cfg.allow_hosts)
        kind = target.kind
        self.plugin.stats[f"requests_{kind.value}"] += 1
        if kind in (Kind.RELEASE, Kind.INDEX):
            await self._index(target)
        elif kind == Kind.BY_HASH:
            blob = self.plugin.archive.by_hash(target)
            if blob is None:
                await self._index(target)
            else:
                await self._blob(target, blob, by_hash=True)
        else:
            self._prefetch_pipelined()
            blob = await self.plugin.archive.package(target)
            if blob is None:
                await self._passthrough(target)
            else:
                await self._blob(target, blob)

    def _prefetch_pipelined(self) -> None:
        """Start the cluster fetches of the .debs apt has already asked for on this connection
        (see `pipeline`): they download while this response goes out."""
        targets = []
        for uri in waiting_uris(self.request.connection):
            try:
                target = parse_request(uri, self.plugin.cfg.allow_hosts)
                if target.kind == Kind.PACKAGE:
                    targets.append(target)
            except BeiranError:
                continue
        if targets:
            self.plugin.prefetch(targets)

    async def _index(self, target: Target) -> None:
        entry: CachedIndex = await self.plugin.indexes.get(target)
        if entry.last_modified:
            self.set_header("Last-Modified", entry.last_modified)
        self.set_header("X-Beiran-Source", entry.via)
        if entry.stale:
            self.set_header("Warning", '110 beiran "upstream unreachable: serving the last good copy"')
        if not_modified(entry, self.request.headers.get("If-Modified-Since")):
            if target.kind == Kind.RELEASE:  # apt will say `Hit` and ask for no index file
                self.plugin.archive.catch_up(target)
            self.set_status(304)
            self.finish()
            return
        self.set_header("Content-Type", entry.content_type)
        self.set_header("Content-Length", str(entry.size))
        await self._send_file(entry)

    async def _send_file(self, entry: CachedIndex) -> None:
        fh = await self.ctx.run_blocking(open, entry.path, "rb")
        try:
            while data := await self.ctx.run_blocking(fh.read, 1 << 20):
                self.write(data)
                await self.flush()
        except StreamClosedError:
            return
        finally:
            fh.close()
        self.finish()

    async def _passthrough(self, target: Target) -> None:
        """A file no trusted index describes: straight from the upstream, not stored, not shared."""
        self.plugin.stats["passthrough"] += 1
        async with stream_request(target.url, {}, ssl_ctx=self.plugin.ssl_ctx, origin=True,
                                  connect_timeout=min(self.plugin.cfg.upstream_timeout, 10.0)) as resp:
            if resp.code in (404, 410):
                raise NotFound(f"{target.url}: the upstream has no such file ({resp.code})")
            if resp.code != 200:
                raise UpstreamError(f"{target.url}: upstream answered {resp.code} {resp.reason}")
            for h in ("Content-Length", "Content-Type", "Last-Modified"):
                if resp.headers.get(h):
                    self.set_header(h, resp.headers[h])
            self.set_header("X-Beiran-Source", "upstream-passthrough")
            try:
                async for chunk in resp.chunks(self.plugin.cfg.upstream_timeout):
                    self.write(chunk)
                    await self.flush()
            except (BeiranError, StreamClosedError) as exc:
                log.info("apt: pass-through of %s stopped: %s", target.url, exc)
                self.http_connection().close()
                return
        self.finish()

    async def _blob(self, target: Target, blob: Blob, by_hash: bool = False) -> None:
        """A content-addressed file from the cluster, served by the core: apt never completes a
        download of bad bytes, and has the file only once its pool files are known (by-hash index)
        or it is pinned and listed (.deb). A Range resumes only from a complete, verified local copy
        and only when no If-Range could disagree (apt's partial file may hold bytes of an earlier,
        failed attempt)."""
        stored = self.ctx.store.has(blob.digest)
        after: Awaitable[Any] | None = None
        if not stored:  # apt asked before its prefetch (if any) was done
            self.plugin.stats["requests_before_stored"] += 1
        if stored and not by_hash and self.plugin.archive.recorded(blob):
            self.plugin.stats["debs_via_cluster"] += 1  # prefetched, stored and listed: serve it
        else:
            job = await self.ctx.fetcher.start(blob.digest, blob.size, blob.source)
            after = self.plugin.after_fetch(target, blob, job, by_hash)
        ext = "." + target.name.rsplit(".", 1)[-1]
        self.set_header("Content-Type", DEB_TYPES.get(ext, "application/octet-stream"))
        self.set_header("X-Beiran-Digest", blob.digest)
        resume = not self.request.headers.get("If-Range") and self.ctx.store.has(blob.digest)
        await serve_blob(self, blob.digest, size=blob.size, source=blob.source, ranges="lenient" if resume else "off",
                         before_end=after)


def make_app(plugin: AptPlugin) -> tornado.web.Application:
    return tornado.web.Application([(r".*", ProxyHandler, {"plugin": plugin})], compress_response=False,
                                   log_function=_log_request, ctx=plugin.ctx)


def _log_request(handler: tornado.web.RequestHandler) -> None:
    status = handler.get_status()
    level = logging.WARNING if status >= 500 else logging.DEBUG
    log.log(level, "apt proxy %d %s %s (%s) %.1fms", status, handler.request.method, handler.request.uri[:200],
            handler.request.remote_ip, 1000.0 * handler.request.request_time())
