"""Stored packuments: fetched from the upstream with conditional requests, kept as files for offline
use, and when the upstream cannot answer, the last good copy (this node's, else a peer's) is served."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from beiran.errors import BeiranError, NotFound, UpstreamError
from beiran.httpstream import stream_request
from beiran_plugins.npm.metadata import (
    ABBREVIATED,
    MalformedPackument,
    abbreviate,
    check_packument,
    sha512_of,
    version_for_file,
)
from beiran_plugins.npm.models import NpmPackument
from beiran_plugins.npm.upstream import Upstream

if TYPE_CHECKING:
    from beiran.context import DaemonContext

log = logging.getLogger("beiran.npm")
KINDS = ("full", "abbr")
MEMORY_ENTRIES = 128
MEMORY_MAX_DOC = 16 << 20
PEER_TIMEOUT = 5.0


@dataclass
class Packument:
    name: str
    kind: str
    doc: dict[str, Any]
    fetched: float
    etag: str | None = None
    last_modified: str | None = None
    origin: str = "upstream"
    size: int = 0
    stale: bool = False  # served without the upstream confirming it just now
    _files: dict[str, str | None] = field(default_factory=dict, repr=False)

    def version_for_file(self, file: str) -> str | None:
        if file not in self._files:
            self._files[file] = version_for_file(self.doc, self.name, file)
        return self._files[file]

    def manifest(self, version: str) -> dict[str, Any] | None:
        m = (self.doc.get("versions") or {}).get(version)
        return m if isinstance(m, dict) else None


def parse(body: bytes, name: str) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedPackument(f"upstream sent a malformed packument for {name}: not JSON ({exc})") from None
    return check_packument(doc, name)


class PackumentCache:
    def __init__(self, ctx: DaemonContext, upstream: Upstream, root: Path, ttl: float,
                 share: bool = True) -> None:
        self.ctx = ctx
        self.upstream = upstream
        self.root = root
        self.ttl = ttl
        self.share = share
        self.mem: OrderedDict[tuple[str, str], Packument] = OrderedDict()
        self.inflight: dict[tuple[str, str], asyncio.Future] = {}
        self.stats = {"upstream_200": 0, "upstream_304": 0, "stale_served": 0, "from_peers": 0}
        self._digest_index: dict[str, tuple[str, str]] | None = None

    def path(self, name: str, kind: str) -> Path:
        return self.root / kind / (quote(name, safe="") + ".json")

    # -- stored copies -------------------------------------------------------------------------
    async def stored(self, name: str, kind: str) -> Packument | None:
        key = (name, kind)
        if key in self.mem:
            self.mem.move_to_end(key)
            return self.mem[key]
        rows = await self.ctx.run_db(lambda: list(NpmPackument.select().where(
            (NpmPackument.name == name) & (NpmPackument.kind == kind)).dicts()))
        if not rows:
            return None
        row = rows[0]
        path = self.path(name, kind)
        try:
            doc = await self.ctx.run_blocking(lambda: parse(path.read_bytes(), name))
        except (OSError, BeiranError) as exc:
            log.warning("npm: stored packument of %s (%s) is unreadable: %s", name, kind, exc)
            return None
        p = Packument(name, kind, doc, row["fetched"], row["etag"], row["last_modified"], row["origin"],
                      row["size"])
        self._remember(p)
        return p

    def _remember(self, p: Packument) -> None:
        if p.size > MEMORY_MAX_DOC:
            return
        self.mem[(p.name, p.kind)] = p
        self.mem.move_to_end((p.name, p.kind))
        while len(self.mem) > MEMORY_ENTRIES:
            self.mem.popitem(last=False)

    async def _save(self, p: Packument, body: bytes) -> None:
        path = self.path(p.name, p.kind)

        def write() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
            tmp.write_bytes(body)
            os.replace(tmp, path)
        await self.ctx.run_blocking(write)
        await self._save_row(p)
        self._remember(p)
        self._digest_index = None

    async def _save_row(self, p: Packument) -> None:
        row = {"name": p.name, "kind": p.kind, "etag": p.etag, "last_modified": p.last_modified,
               "fetched": p.fetched, "size": p.size, "origin": p.origin}
        await self.ctx.run_db(lambda: NpmPackument.insert(**row).on_conflict_replace().execute())

    # -- the read path -------------------------------------------------------------------------
    async def get(self, name: str, kind: str, refresh: bool = False) -> Packument:
        """The packument, revalidated with the upstream once older than the TTL."""
        current = await self.stored(name, kind)
        if current is not None and not refresh and time.time() - current.fetched < self.ttl:
            current.stale = False
            return current
        key = (name, kind)
        fut = self.inflight.get(key)
        if fut is None:
            fut = asyncio.ensure_future(self._refresh(name, kind, current))
            self.inflight[key] = fut
            fut.add_done_callback(lambda f, key=key: self.inflight.pop(key, None))
            fut.add_done_callback(lambda f: f.cancelled() or f.exception())
        return await asyncio.shield(fut)

    async def any_with_version(self, name: str, version: str | None = None,
                               file: str | None = None) -> tuple[Packument, str]:
        """A packument listing this version (or tarball file). Published versions never change, so
        any stored copy that has it will do; otherwise ask the upstream (or peers)."""
        for kind in KINDS:
            p = await self.stored(name, kind)
            if p is not None:
                v = version if version is not None else p.version_for_file(file or "")
                if v is not None and p.manifest(v) is not None:
                    return p, v
        p = await self.get(name, "abbr", refresh=True)
        v = version if version is not None else p.version_for_file(file or "")
        if v is None or p.manifest(v) is None:
            what = f"{name}@{version}" if version else f"{name}/-/{file}"
            raise NotFound(f"{what} is not in the registry")
        return p, v

    async def _refresh(self, name: str, kind: str, current: Packument | None) -> Packument:
        try:
            res = await self.upstream.packument(name, kind, current.etag if current else None,
                                                current.last_modified if current else None)
            if res.status == 304:
                if current is None:
                    raise UpstreamError(f"upstream answered 304 for {name} without being asked conditionally")
                self.stats["upstream_304"] += 1
                current.fetched, current.stale = time.time(), False
                current.etag = res.etag or current.etag
                current.last_modified = res.last_modified or current.last_modified
                await self._save_row(current)
                return current
            body = res.body or b""
            doc = await self.ctx.run_blocking(parse, body, name)
            if kind == "abbr" and res.content_type != ABBREVIATED:
                # the upstream ignored the Accept header: keep the abbreviated form all the same
                doc = abbreviate(doc)
                body = await self.ctx.run_blocking(lambda: json.dumps(doc).encode())
        except UpstreamError as exc:
            return await self._fallback(name, kind, current, exc)
        self.stats["upstream_200"] += 1
        p = Packument(name, kind, doc, time.time(), res.etag, res.last_modified, "upstream", len(body))
        await self._save(p, body)
        return p

    async def _fallback(self, name: str, kind: str, current: Packument | None, exc: UpstreamError) -> Packument:
        """The upstream failed (unreachable, 5xx, timeout, malformed): serve the last good copy."""
        if current is not None:
            self.stats["stale_served"] += 1
            log.warning("npm: %s; serving the copy of %s stored %.0fs ago", exc.message, name,
                        time.time() - current.fetched)
            current.stale = True
            return current
        other = await self.stored(name, "full" if kind == "abbr" else "abbr")
        if other is not None:
            self.stats["stale_served"] += 1
            log.warning("npm: %s; serving the stored %s packument of %s instead", exc.message, other.kind, name)
            doc = abbreviate(other.doc) if kind == "abbr" else other.doc
            return Packument(name, kind, doc, other.fetched, None, None, other.origin, other.size, stale=True)
        if self.share:
            got = await self._from_peers(name, kind)
            if got is not None:
                log.warning("npm: %s; serving the packument of %s a peer had (%s)", exc.message, name, got.origin)
                return got
        raise exc

    async def _from_peers(self, name: str, kind: str) -> Packument | None:
        path = f"/npm/-/beiran/peer/packument/{kind}/{quote(name, safe='@')}"
        for node in self.ctx.peers.online():
            conn = self.ctx.peers.conn(node)
            base = self.ctx.peers.url_of(node)
            if conn is None or not base or "npm" not in (conn.info.get("plugins") or []):
                continue
            try:
                async with stream_request(base + path, self.ctx.auth.headers("GET", path),
                                          connect_timeout=PEER_TIMEOUT) as resp:
                    if resp.code != 200:
                        continue
                    body = await resp.read_all(self.upstream.max_packument_size, idle_timeout=PEER_TIMEOUT)
                doc = await self.ctx.run_blocking(parse, body, name)
            except (BeiranError, OSError, ValueError) as exc:
                log.info("npm: peer %s had no usable packument of %s: %s", node[:8], name, exc)
                continue
            self.stats["from_peers"] += 1
            # fetched=0: revalidated with the upstream as soon as it answers again
            p = Packument(name, kind, doc, 0.0, None, None, f"peer:{node}", len(body), stale=True)
            await self._save(p, body)
            return p
        return None

    async def for_peer(self, name: str, kind: str) -> tuple[bytes, float] | None:
        """What this node can hand a peer during an outage: stored copies only, never the upstream."""
        p = await self.stored(name, kind)
        if p is not None:
            data = await self.ctx.run_blocking(self.path(name, kind).read_bytes)
            return data, p.fetched
        if kind == "abbr":
            full = await self.stored(name, "full")
            if full is not None:
                body = await self.ctx.run_blocking(lambda: json.dumps(abbreviate(full.doc)).encode())
                return body, full.fetched
        return None

    # -- index -----------------------------------------------------------------------------------
    async def digest_index(self) -> dict[str, tuple[str, str]]:
        """sha512 digest -> (name, version) over every stored packument."""
        if self._digest_index is not None:
            return self._digest_index
        rows = await self.ctx.run_db(lambda: list(NpmPackument.select(NpmPackument.name, NpmPackument.kind)
                                                  .tuples()))

        def build() -> dict[str, tuple[str, str]]:
            index: dict[str, tuple[str, str]] = {}
            for name, kind in rows:
                try:
                    doc = json.loads(self.path(name, kind).read_bytes())
                except (OSError, ValueError):
                    continue
                for v, manifest in (doc.get("versions") or {}).items():
                    d = sha512_of((manifest or {}).get("dist") or {}) if isinstance(manifest, dict) else None
                    if d is not None:
                        index[str(d)] = (name, v)
            return index
        self._digest_index = await self.ctx.run_blocking(build)
        return self._digest_index

    async def count(self) -> int:
        return await self.ctx.run_db(lambda: NpmPackument.select().count())
