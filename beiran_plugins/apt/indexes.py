"""Index files (InRelease, Packages, ...): fetched from the upstream with If-Modified-Since, kept on
disk byte for byte, and served from that copy. When the upstream cannot be reached, the last good
copy is served — this node's, or a peer's (apt checks the signature either way, and so do we before
using any hash in it)."""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from beiran.errors import BeiranError, NotFound, UpstreamError
from beiran.httpstream import stream_request
from beiran_plugins.apt.urls import Target

if TYPE_CHECKING:
    from beiran_plugins.apt.plugin import AptPlugin

log = logging.getLogger("beiran.apt")


@dataclass
class CachedIndex:
    url: str
    path: Path
    size: int
    sha256: str
    fetched: float
    last_modified: str | None = None
    content_type: str = "application/octet-stream"
    stale: bool = False  # served without the upstream confirming it
    via: str = "upstream"  # upstream | cache | peer:<uuid>

    def meta(self) -> dict:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


class IndexCache:
    """Files under <data>/apt/indexes/<2 hex>/<sha256 of URL>, with a JSON sidecar each."""

    def __init__(self, root: Path, run_blocking: Callable[..., Awaitable[Any]]) -> None:
        self.root = root
        self.tmp = root / "tmp"
        self.run_blocking = run_blocking
        self.tmp.mkdir(parents=True, exist_ok=True)
        for f in self.tmp.iterdir():
            f.unlink(missing_ok=True)

    def _paths(self, url: str) -> tuple[Path, Path]:
        h = hashlib.sha256(url.encode()).hexdigest()
        return self.root / h[:2] / h, self.root / h[:2] / (h + ".json")

    def scratch_file(self) -> Path:
        return self.tmp / uuid.uuid4().hex

    async def get(self, url: str) -> CachedIndex | None:
        data, meta = self._paths(url)

        def read() -> CachedIndex | None:
            try:
                m = json.loads(meta.read_text())
                if m.get("url") != url or not data.is_file() or data.stat().st_size != m["size"]:
                    return None
                m["path"] = data
                return CachedIndex(**m)
            except (OSError, ValueError, TypeError, KeyError):
                return None
        return await self.run_blocking(read)

    async def put(self, url: str, tmp: Path, last_modified: str | None, content_type: str | None,
                  via: str = "upstream") -> CachedIndex:
        data, meta = self._paths(url)

        def write() -> CachedIndex:
            h, n = hashlib.sha256(), 0
            with open(tmp, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    h.update(chunk)
                    n += len(chunk)
            data.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, data)
            entry = CachedIndex(url, data, n, h.hexdigest(), time.time(), last_modified,
                                content_type or "application/octet-stream", via=via)
            m = entry.meta()
            del m["path"], m["stale"]
            meta.write_text(json.dumps(m))
            return entry
        return await self.run_blocking(write)

    async def touch(self, entry: CachedIndex) -> None:
        _, meta = self._paths(entry.url)
        entry.fetched = time.time()
        m = entry.meta()
        del m["path"], m["stale"]
        await self.run_blocking(meta.write_text, json.dumps(m))


class IndexService:
    def __init__(self, plugin: AptPlugin) -> None:
        self.plugin = plugin
        self.ctx = plugin.ctx
        self.cache = IndexCache(plugin.root / "indexes", plugin.ctx.run_blocking)
        self._locks: dict[str, asyncio.Lock] = {}

    async def get(self, target: Target) -> CachedIndex:
        """The current copy of an index file: revalidated upstream, else the last good one."""
        url = target.url
        lock = self._locks.setdefault(url, asyncio.Lock())
        try:
            async with lock:
                return await self._get(target)
        finally:
            if not lock.locked() and self._locks.get(url) is lock:
                del self._locks[url]

    async def _get(self, target: Target) -> CachedIndex:
        url = target.url
        cached = await self.cache.get(url)
        tmp = self.cache.scratch_file()
        try:
            try:
                code, reason, headers = await self._download(url, tmp, cached.last_modified if cached else None)
            except UpstreamError as exc:
                return await self._fallback(target, cached, exc)
            if code == 200:
                entry = await self.cache.put(url, tmp, headers.get("Last-Modified"), headers.get("Content-Type"))
                await self.plugin.archive.learn(target, entry.path, entry.sha256)
                return entry
            if code == 304 and cached is not None:
                await self.cache.touch(cached)
                if target.kind.value == "release":
                    await self.plugin.archive.refreshed(target)
                await self.plugin.archive.learn(target, cached.path, cached.sha256)
                cached.via = "cache"
                return cached
            if code in (404, 410):
                raise NotFound(f"{url}: the upstream has no such file ({code})")
            if code >= 500 or code == 304:
                return await self._fallback(target, cached, UpstreamError(f"{url}: upstream answered {code} {reason}"))
            raise UpstreamError(f"{url}: upstream answered {code} {reason}")
        finally:
            tmp.unlink(missing_ok=True)

    async def _download(self, url: str, tmp: Path, ims: str | None) -> tuple[int, str, dict[str, str]]:
        cfg = self.plugin.cfg
        headers = {"If-Modified-Since": ims} if ims else {}
        async with stream_request(url, headers, ssl_ctx=self.plugin.ssl_ctx, origin=True,
                                  connect_timeout=min(cfg.upstream_timeout, 10.0)) as resp:
            if resp.code != 200:
                return resp.code, resp.reason, dict(resp.headers)
            n = 0
            fh = await self.ctx.run_blocking(open, tmp, "wb")
            try:
                async for chunk in resp.chunks(cfg.upstream_timeout):
                    n += len(chunk)
                    if n > cfg.max_index_size:
                        raise UpstreamError(f"{url}: index larger than max_index_size ({cfg.max_index_size})")
                    await self.ctx.run_blocking(fh.write, chunk)
            finally:
                fh.close()
            length = resp.headers.get("Content-Length")
            if length and length.isdigit() and int(length) != n:
                raise UpstreamError(f"{url}: upstream sent {n} of {length} bytes")
            return 200, resp.reason, dict(resp.headers)

    async def _fallback(self, target: Target, cached: CachedIndex | None, exc: BeiranError) -> CachedIndex:
        if cached is not None:
            log.warning("apt: %s; serving the copy from %s", exc.message,
                        time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(cached.fetched)))
            self.plugin.archive.stats["stale_served"] += 1
            cached.stale, cached.via = True, "cache"
            await self.plugin.archive.learn(target, cached.path, cached.sha256)
            return cached
        if self.plugin.cfg.peer_index_fallback:
            entry = await self._from_peers(target)
            if entry is not None:
                log.warning("apt: %s; serving a copy from %s", exc.message, entry.via)
                return entry
        raise UpstreamError(f"{exc.message}; no copy on this node or its peers")

    async def _from_peers(self, target: Target) -> CachedIndex | None:
        url = target.url
        for node in await self.ctx.peers.reachable("apt"):  # websocket peers or members (swim)
            base = self.ctx.peers.url_of(node)
            if not base:
                continue
            tmp = self.cache.scratch_file()
            path = "/apt/index"
            try:
                target_path = f"{path}?url={quote(url, safe='')}"
                async with stream_request(base + target_path, self.ctx.auth.headers("GET", target_path),
                                          connect_timeout=5.0) as resp:
                    if resp.code != 200:
                        continue
                    data = await resp.read_all(self.plugin.cfg.max_index_size, idle_timeout=10.0)
                    lm = resp.headers.get("Last-Modified")
                await self.ctx.run_blocking(tmp.write_bytes, data)
            except (BeiranError, OSError) as exc:
                log.info("apt: peer %s could not give %s: %s", node[:8], url, exc)
                tmp.unlink(missing_ok=True)
                continue
            entry = await self.cache.put(url, tmp, lm, None, via=f"peer:{node}")
            entry.stale = True
            self.plugin.archive.stats["peer_indexes"] += 1
            await self.plugin.archive.learn(target, entry.path, entry.sha256, from_peer=True)
            return entry
        return None


def not_modified(entry: CachedIndex, ims: str | None) -> bool:
    """Whether the client's copy (If-Modified-Since) is as new as ours."""
    if not ims or not entry.last_modified:
        return False
    try:
        theirs = email.utils.parsedate_to_datetime(ims)
        ours = email.utils.parsedate_to_datetime(entry.last_modified)
        return theirs >= ours
    except (TypeError, ValueError):
        return False
