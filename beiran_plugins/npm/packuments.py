"""Stored packuments: fetched from the upstream with conditional requests, kept as files for offline
use, and when the upstream cannot answer, the last good copy (this node's, else a peer's) is served."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

from peewee import PeeweeException

from beiran import offline
from beiran.errors import BeiranError, NotFound, UpstreamError
from beiran.models.base import dict_rows, tuple_rows
from beiran.store.dbbatch import Insert
from beiran_plugins.npm.agreement import agreed_doc, peer_doc, vouching
from beiran_plugins.npm.metadata import (
    ABBREVIATED,
    abbreviate,
    parse,
    sha512_of,
    version_for_file,
)
from beiran_plugins.npm.models import NpmPackument
from beiran_plugins.npm.upstream import Upstream

if TYPE_CHECKING:
    from beiran.context import DaemonContext

log = logging.getLogger("beiran.npm")
T = TypeVar("T")
KINDS = ("full", "abbr")
_INSERT_PACKUMENT = Insert(NpmPackument, ("name", "kind", "etag", "last_modified", "fetched", "size", "origin"),
                           "REPLACE")
MEMORY_ENTRIES = 128
MEMORY_MAX_DOC = 16 << 20
#: a packument up to this size is parsed and rewritten on the event loop: that takes well under a
#: millisecond, less than the two thread switches of sending it to a worker (npm asks for
#: packuments one after another while it resolves, so each one's latency adds up)
INLINE_JSON = 64 << 10


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
    offline: str | None = None  # answered during an outage: the X-Beiran-Offline header value
    _files: dict[str, str | None] = field(default_factory=dict, repr=False)

    def version_for_file(self, file: str) -> str | None:
        if file not in self._files:
            self._files[file] = version_for_file(self.doc, self.name, file)
        return self._files[file]

    def manifest(self, version: str) -> dict[str, Any] | None:
        m = (self.doc.get("versions") or {}).get(version)
        return m if isinstance(m, dict) else None


def _write_file(path: Path, body: bytes, dirs: set[Path]) -> None:
    """A packument's file, replaced whole; `dirs` holds the directories made already."""
    if path.parent not in dirs:
        path.parent.mkdir(parents=True, exist_ok=True)
        dirs.add(path.parent)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_bytes(body)
    os.replace(tmp, path)


def _small_write(path: Path, body: bytes | None, row: tuple[Any, ...], dirs: set[Path]) -> Callable[[], None]:
    """The database-thread work of storing a small packument: its file (when it has a new body),
    then its row."""
    def write() -> None:
        if body is not None:
            _write_file(path, body, dirs)
        _INSERT_PACKUMENT(*row)
    return write


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
        self.offline = offline.OfflineAnswers(ctx, "npm")
        #: (name, kind) of every stored row, read once at start: a packument this node never stored
        #: is known absent without a database round trip (None: not loaded, ask the database)
        self._rows: set[tuple[str, str]] | None = None
        #: the background write of each packument being stored (one at a time per packument)
        self._writes: dict[tuple[str, str], asyncio.Future[None]] = {}
        self._dirs: set[Path] = set()  # directories made already (written from the database thread)

    async def load(self) -> None:
        rows = await self.ctx.run_db(lambda: tuple_rows(NpmPackument.select(NpmPackument.name, NpmPackument.kind)))
        self._rows = {(str(n), str(k)) for n, k in rows}

    async def run_json(self, fn: Callable[[], T], size: int) -> T:
        """`fn` (JSON work on a document of `size` bytes) inline when small, else on an I/O thread."""
        if size <= INLINE_JSON:
            return fn()
        return await self.ctx.run_blocking(fn)

    def path(self, name: str, kind: str) -> Path:
        return self.root / kind / (quote(name, safe="") + ".json")

    # -- stored copies -------------------------------------------------------------------------
    async def stored(self, name: str, kind: str) -> Packument | None:
        key = (name, kind)
        if key in self.mem:
            self.mem.move_to_end(key)
            return self.mem[key]
        if self._rows is not None and key not in self._rows:
            return None
        await self._settled(key)
        rows = await self.ctx.run_db(lambda: dict_rows(NpmPackument.select().where(
            (NpmPackument.name == name) & (NpmPackument.kind == kind))))
        if not rows:
            return None
        row = rows[0]
        if row["origin"] != "upstream":
            return None  # a peer's copy saved by an older version: never this node's own
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

    def _save(self, p: Packument, body: bytes | None) -> None:
        """Keep `p` (in memory now; its file, when `body` is given, and its row in the background:
        an answer does not wait for the disk). Writes of one packument happen in order."""
        key = (p.name, p.kind)
        self._remember(p)
        if self._rows is not None:
            self._rows.add(key)  # stored() asks the database once this write is done
        row = (p.name, p.kind, p.etag, p.last_modified, p.fetched, p.size, p.origin)
        before = self._writes.get(key)
        if before is None and (body is None or len(body) <= INLINE_JSON):
            # a small file and its row: queued for the store's next batch of database writes
            # straight away, without a task of its own (one event-loop pass less per answer)
            write = _small_write(self.path(*key), body, row, self._dirs)
            fut = self.ctx.store.db_batch.submit(write)
            self._writes[key] = fut
            fut.add_done_callback(functools.partial(self._small_written, key, body is not None))
            return
        task = asyncio.ensure_future(self._write(key, body, row, before))
        self._writes[key] = task
        task.add_done_callback(functools.partial(self._written, key))

    def _small_written(self, key: tuple[str, str], with_body: bool, fut: asyncio.Future[None]) -> None:
        self._written(key, fut)
        exc = None if fut.cancelled() else fut.exception()
        if isinstance(exc, (OSError, PeeweeException)):
            log.warning("npm: could not store the packument of %s (%s): %s", key[0], key[1], exc)
        elif exc is None and with_body and not fut.cancelled():
            self._digest_index = None

    async def _write(self, key: tuple[str, str], body: bytes | None, row: tuple[Any, ...],
                     before: asyncio.Future[None] | None) -> None:
        if before is not None:
            await asyncio.wait([before])  # its own failure was logged by itself
        path = self.path(*key)
        try:
            if body is not None and len(body) > INLINE_JSON:
                await self.ctx.run_blocking(functools.partial(_write_file, path, body, self._dirs))
                await self.ctx.store.db_batch.write(lambda: _INSERT_PACKUMENT(*row))
            else:  # a small file: written in the store's next batch of database writes, no hop of its own
                await self.ctx.store.db_batch.write(_small_write(path, body, row, self._dirs))
        except (OSError, PeeweeException) as exc:
            log.warning("npm: could not store the packument of %s (%s): %s", key[0], key[1], exc)
            return
        if body is not None:
            self._digest_index = None

    def _written(self, key: tuple[str, str], task: asyncio.Future[None]) -> None:
        if self._writes.get(key) is task:
            del self._writes[key]
        if not task.cancelled():
            task.exception()  # _write logs its own failures; anything else is retrieved here

    async def _settled(self, key: tuple[str, str]) -> None:
        """Wait for the background write of this packument, if one is under way."""
        task = self._writes.get(key)
        if task is not None:
            await asyncio.wait([task])

    async def flush(self) -> None:
        """Wait for every background write (the plugin stops)."""
        while self._writes:
            await asyncio.wait(list(self._writes.values()))

    # -- the read path -------------------------------------------------------------------------
    async def get(self, name: str, kind: str, refresh: bool = False) -> Packument:
        """The packument, revalidated with the upstream once older than the TTL. Concurrent asks for
        one packument share one upstream request: the first runs it, the others wait for its answer.

        The first runs it itself rather than in a task of its own: npm asks for packuments one after
        another while it resolves, and a task (and the shield around it) cost three more passes of
        the event loop on every answer."""
        current = await self.stored(name, kind)
        if current is not None and not refresh and time.time() - current.fetched < self.ttl:
            current.stale = False
            return current
        key = (name, kind)
        shared = self.inflight.get(key)
        if shared is not None:
            return await asyncio.shield(shared)
        shared = self.inflight[key] = asyncio.get_running_loop().create_future()
        try:
            p = await self._refresh(name, kind, current)
        except asyncio.CancelledError:
            shared.cancel()  # the daemon stops: those waiting with it stop too
            raise
        except BaseException as exc:
            shared.set_exception(exc)
            shared.exception()  # retrieved: those waiting get it raised; none may be waiting
            raise
        else:
            shared.set_result(p)
            return p
        finally:
            if self.inflight.get(key) is shared:
                del self.inflight[key]

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
                self._save(current, None)
                return current
            body = res.body or b""
            doc = await self.run_json(functools.partial(parse, body, name), len(body))
            if kind == "abbr" and res.content_type != ABBREVIATED:
                # the upstream ignored the Accept header: keep the abbreviated form all the same
                doc = abbreviate(doc)
                body = await self.run_json(lambda: json.dumps(doc).encode(), len(body))
        except UpstreamError as exc:
            return await self._fallback(name, kind, current, exc)
        self.stats["upstream_200"] += 1
        p = Packument(name, kind, doc, time.time(), res.etag, res.last_modified, "upstream", len(body))
        self._save(p, body)
        return p

    async def _fallback(self, name: str, kind: str, current: Packument | None, exc: UpstreamError) -> Packument:
        """The upstream failed (unreachable, 5xx, timeout, malformed): this node's own last good copy,
        else what enough peers agree on (beiran/offline.py)."""
        what = f"packument {name} ({kind})"
        if current is not None:
            self.stats["stale_served"] += 1
            self.offline.report(offline.OWN, what, f"the copy stored {time.time() - current.fetched:.0f}s ago",
                                detail=exc.message)
            current.stale, current.offline = True, offline.header_value(offline.OWN)
            return current
        other = await self.stored(name, "full" if kind == "abbr" else "abbr")
        if other is not None:
            self.stats["stale_served"] += 1
            self.offline.report(offline.OWN, what, f"the stored {other.kind} packument", detail=exc.message)
            doc = abbreviate(other.doc) if kind == "abbr" else other.doc
            return Packument(name, kind, doc, other.fetched, None, None, other.origin, other.size, stale=True,
                             offline=offline.header_value(offline.OWN))
        if self.share:
            got = await self._from_peers(name, kind, exc)
            if got is not None:
                return got
        raise exc

    async def _from_peers(self, name: str, kind: str, exc: UpstreamError) -> Packument | None:
        """The versions (and dist-tags) enough peers agree on, each peer's copy being one it fetched
        from its own upstream. Kept in memory only: the node never takes it for its own copy."""
        path = f"/npm/-/beiran/peer/packument/{kind}/{quote(name, safe='@')}"
        answers = await self.offline.ask(path, lambda body: peer_doc(body, name, kind),
                                         self.upstream.max_packument_size)
        what = f"packument {name} ({kind})"
        verdicts = offline.agree({n: votes for n, (_, votes) in answers.items()}, self.offline.quorum)
        if not verdicts:
            self.offline.report(offline.UNKNOWN, what, detail=exc.message)
            return None
        doc = agreed_doc(name, kind, {n: d for n, (d, _) in answers.items()}, verdicts)
        left_out = sum(1 for v in verdicts.values() if v.value is None)
        if not doc["versions"]:
            self.offline.report(offline.REFUSED, what, detail=f"{exc.message}; {len(answers)} peers answered, "
                                f"{left_out} versions/tags without agreement")
            return None
        peers = vouching(verdicts)
        latest = doc["dist-tags"].get("latest")
        integrity = ((doc["versions"].get(latest) or {}).get("dist") or {}).get("integrity") if latest else None
        value = f"{len(doc['versions'])} versions, latest {latest} {str(integrity or '')[:30]}"
        self.offline.report(offline.AGREED, what, value, peers,
                            detail=f"{exc.message}; {left_out} versions/tags without agreement left out")
        self.stats["from_peers"] += 1
        body = json.dumps(doc).encode()
        return Packument(name, kind, doc, 0.0, None, None, "peers", len(body), stale=True,
                         offline=offline.header_value(offline.AGREED, peers))

    async def for_peer(self, name: str, kind: str) -> tuple[bytes, float] | None:
        """What this node can hand a peer during an outage: stored copies only, never the upstream."""
        p = await self.stored(name, kind)
        if p is not None:
            await self._settled((name, kind))
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
        await self.flush()
        rows = await self.ctx.run_db(lambda: tuple_rows(NpmPackument.select(NpmPackument.name, NpmPackument.kind)))

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
