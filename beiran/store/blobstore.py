"""The blob store: files under <data>/blobs/<alg>/<2 hex>/<hex>, an index in sqlite (mirrored in
memory), writes through BlobWriter; pins and eviction are in `retention`."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from beiran import events
from beiran.errors import BlobNotFound, Conflict, Forbidden, StorageFull, UpstreamError
from beiran.models.base import dict_rows
from beiran.models.blob import Blob, BlobRef
from beiran.store.dbbatch import Insert, WriteBatcher
from beiran.store.digest import Digest, parse_digest
from beiran.store.restricted import Restrictions
from beiran.store.retention import Retention
from beiran.store.writer import BlobWriter

if TYPE_CHECKING:
    from beiran.context import DaemonContext

log = logging.getLogger(__name__)
READ_CHUNK = 1 << 20
#: a stored blob up to READ_CHUNK + this is read in one piece
SMALL_TAIL = 256 << 10
_INSERT_BLOB = Insert(Blob, ("digest", "size", "state", "path", "media_type", "created", "last_access"), "REPLACE")


def _row_written(fut: asyncio.Future[Any]) -> None:
    """A blob row written behind failed: the blob stays stored (the next start adopts its file)."""
    if not fut.cancelled() and fut.exception() is not None:
        log.warning("store: recording a blob in the database failed: %s", fut.exception())


def _read_range(path: str, offset: int, size: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        parts, pos = [], offset
        while pos < offset + size:
            data = os.pread(fd, offset + size - pos, pos)
            if not data:
                break
            parts.append(data)
            pos += len(data)
        return b"".join(parts) if len(parts) != 1 else parts[0]
    finally:
        os.close(fd)


@dataclass
class BlobEntry:
    digest: str
    size: int
    state: str = "complete"  # complete | external
    path: str | None = None  # external blobs only
    media_type: str = ""
    last_access: float = 0.0
    created: float = 0.0
    #: written by direct I/O, past the page cache (read so too: serve.copy_range); not persisted
    uncached: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"digest": self.digest, "size": self.size, "state": self.state,
                "media_type": self.media_type, "last_access": self.last_access,
                "created": self.created}


class BlobStore(Retention, Restrictions):
    def __init__(self, ctx: DaemonContext, root: Path) -> None:
        self.ctx = ctx
        self.root = root
        self.tmp_dir = root / "tmp"
        self.entries: dict[str, BlobEntry] = {}
        self.writers: dict[str, BlobWriter] = {}
        self.pins: dict[str, set[tuple[str, str]]] = {}
        self._in_use: Counter[str] = Counter()
        self._dirty_access: set[str] = set()
        self._bg: asyncio.Task | None = None
        #: writers whose size only a peer claimed: no room was made for it (see make_room)
        self.unreserved: set[str] = set()
        #: blobs read from their origin with credentials: never served to peers
        self.restricted: set[str] = set()
        #: checks run before a blob is served to a peer (see add_access_policy)
        self.access_policies: list[Callable[[str, str | None], str | None]] = [self.restricted_policy]
        #: index rows and pins, one transaction per batch (plugins' per-blob rows may join it)
        self.db_batch = WriteBatcher(ctx.run_db, lambda: Blob._meta.database)

    # -- paths -----------------------------------------------------------------------------------
    def path_for(self, digest: Digest | str) -> Path:
        """The only way a store path is made: from a parsed (validated) digest."""
        d = digest if isinstance(digest, Digest) else parse_digest(digest)
        return self.root / f"{d.algorithm}/{d.hex[:2]}/{d.hex}"

    # -- start-up ------------------------------------------------------------------------------
    async def open(self) -> None:
        for alg in ("sha256", "sha512"):
            (self.root / alg).mkdir(parents=True, exist_ok=True)
        if self.tmp_dir.exists():
            shutil.rmtree(self.tmp_dir, ignore_errors=True)  # leftovers of a crash
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        rows, refs = await self.ctx.run_db(lambda: (dict_rows(Blob.select()),
                                                   dict_rows(BlobRef.select())))
        for r in rows:
            self.entries[r["digest"]] = BlobEntry(r["digest"], r["size"], r["state"], r["path"],
                                                  r["media_type"], r["last_access"], r["created"])
        for r in refs:
            self.pins.setdefault(r["digest"], set()).add((r["owner"], r["ref"]))
        await self.load_restrictions()
        await self.reconcile()
        self._bg = asyncio.ensure_future(self._persist_access_loop())

    async def reconcile(self) -> dict[str, int]:
        """Make index and files agree: drop rows without files, verify and index unknown files."""
        result = await self.ctx.run_blocking(self._scan_files)
        stale = [d for d, e in self.entries.items()
                 if e.state == "complete" and d not in result["present"]]
        stale += [d for d, e in self.entries.items()
                  if e.state == "external" and not (e.path and os.path.exists(e.path))]
        for d in stale:
            self.entries.pop(d, None)
        new_entries = [e for e in result["adopted"] if e.digest not in self.entries]
        for e in new_entries:
            self.entries[e.digest] = e
        if stale or new_entries:
            await self.ctx.run_db(self._db_reconcile, stale, new_entries)
            log.info("store: %d index rows without files dropped, %d files adopted",
                     len(stale), len(new_entries))
        return {"dropped": len(stale), "adopted": len(new_entries), "corrupt": result["corrupt"]}

    def _scan_files(self) -> dict[str, Any]:
        present: set[str] = set()
        adopted: list[BlobEntry] = []
        corrupt = 0
        for alg in ("sha256", "sha512"):
            base = self.root / alg
            for sub in base.iterdir() if base.exists() else ():
                for f in sub.iterdir():
                    digest = f"{alg}:{f.name}"
                    try:
                        d = parse_digest(digest)
                    except Exception:  # noqa: BLE001 - stray file: not ours to keep
                        f.unlink(missing_ok=True)
                        continue
                    entry = self.entries.get(digest)
                    size = f.stat().st_size
                    if entry is not None and entry.size == size:
                        present.add(digest)
                        continue
                    h = d.hasher()
                    with open(f, "rb") as fh:
                        while chunk := fh.read(READ_CHUNK):
                            h.update(chunk)
                    if h.hexdigest() == d.hex:
                        now = time.time()
                        present.add(digest)
                        adopted.append(BlobEntry(digest, size, "complete", None, "", now, now))
                    else:
                        corrupt += 1
                        log.warning("store: %s does not match its digest; removed", digest)
                        f.unlink(missing_ok=True)
        return {"present": present, "adopted": adopted, "corrupt": corrupt}

    @staticmethod
    def _db_reconcile(stale: list[str], new_entries: list[BlobEntry]) -> None:
        db = Blob._meta.database
        with db.atomic():
            for i in range(0, len(stale), 500):
                Blob.delete().where(Blob.digest.in_(stale[i:i + 500])).execute()
            rows = [{"digest": e.digest, "size": e.size, "state": e.state, "path": e.path,
                     "created": e.created, "last_access": e.last_access} for e in new_entries]
            for i in range(0, len(rows), 500):
                Blob.insert_many(rows[i:i + 500]).on_conflict_replace().execute()

    async def close(self) -> None:
        if self._bg:
            self._bg.cancel()
        for w in list(self.writers.values()):
            w.fail(UpstreamError("daemon shutting down"))
        await self.db_batch.flush()
        await self._flush_access()

    # -- queries ---------------------------------------------------------------------------------
    def has(self, digest: str) -> bool:
        return digest in self.entries

    def get(self, digest: str) -> BlobEntry | None:
        return self.entries.get(digest)

    def writing(self, digest: str) -> BlobWriter | None:
        return self.writers.get(digest)

    def total_size(self) -> int:
        return sum(e.size for e in self.entries.values() if e.state == "complete")

    def stats(self, local: bool = True) -> dict[str, Any]:
        """Counts and sizes; `local` (the admin socket) adds the data path and disk figures, which
        are nobody else's business."""
        complete = [e for e in self.entries.values() if e.state == "complete"]
        pinned = [e for e in complete if self.pins.get(e.digest)]
        out: dict[str, Any] = {
            "blobs": len(self.entries), "bytes": sum(e.size for e in complete),
            "external_blobs": len(self.entries) - len(complete),
            "pinned_blobs": len(pinned), "pinned_bytes": sum(e.size for e in pinned),
            "downloading": len(self.writers)}
        if local:
            usage = shutil.disk_usage(self.root)
            out.update({"max_size": self.ctx.config.store.max_size, "disk_free": usage.free,
                        "disk_total": usage.total, "path": str(self.root)})
        return out

    def list(self) -> list[dict[str, Any]]:
        out = []
        for e in sorted(self.entries.values(), key=lambda e: e.digest):
            d = e.to_dict()
            d["pinned_by"] = sorted(f"{o}:{r}" for o, r in self.pins.get(e.digest, ()))
            out.append(d)
        return out

    # -- access (serving to peers) ----------------------------------------------------------------
    def add_access_policy(self, policy: Callable[[str, str | None], str | None]) -> Callable[[], None]:
        """Register `policy(digest, peer_uuid) -> None | reason`, run before a blob goes to a peer
        (e.g. the k8s plugin's private-image rule). peer_uuid is the requester proven by the cluster
        token, None when it is not known. A reason refuses the request with 403. Returns a remover."""
        self.access_policies.append(policy)
        return lambda: self.access_policies.remove(policy) if policy in self.access_policies else None

    def check_access(self, digest: str, peer: str | None) -> None:
        """Raise Forbidden when any access policy refuses `digest` to `peer`."""
        for policy in list(self.access_policies):
            reason = policy(digest, peer)
            if reason:
                raise Forbidden(reason)

    # -- writing ---------------------------------------------------------------------------------
    async def begin_write(self, digest: str, size: int | None, *, reserve: bool) -> BlobWriter:
        """A writer for a blob not yet stored. The caller feeds it and then calls commit().

        `reserve`: `size` comes from this node's own client, so room is made for it (evicting
        unpinned blobs if needed). Otherwise it is a claim nobody has verified (a peer's): it must
        fit in the room there is, nothing is evicted for it, and it reserves nothing."""
        d = parse_digest(digest)
        if digest in self.entries:
            raise Conflict(f"blob {d.short} is already stored")
        if digest in self.writers:
            raise Conflict(f"blob {d.short} is already being written")
        if size is not None:
            await self.make_room(size, evict=reserve)
        tmp = self.tmp_dir / f"{d.hex[:16]}-{uuid.uuid4().hex[:8]}"
        writer = BlobWriter(d, size, tmp, self.ctx.run_blocking)
        writer.seal_fsync, writer.seal_to = self.ctx.config.store.fsync, self.path_for(d)
        self.writers[digest] = writer
        if not reserve:
            self.unreserved.add(digest)
        self.ctx.bus.emit(events.BLOB_PROGRESS, digest=digest, size=size, state="started")
        return writer

    async def commit(self, writer: BlobWriter, media_type: str = "") -> BlobEntry:
        """Verify and move into place; on any failure the temp file is gone and nothing is indexed."""
        digest = str(writer.digest)
        try:
            await writer.finish(fsync=self.ctx.config.store.fsync,
                                move_to=writer.seal_to or self.path_for(writer.digest))
            now = time.time()
            entry = BlobEntry(digest, writer.available, "complete", None, media_type, now, now)
            entry.uncached = writer.direct
            # the file is in place and verified: the blob is stored from here on. Its row is
            # written behind, with the next rows (a crash before it leaves a verified file, which
            # the next start adopts after hashing it again)
            self.db_batch.submit(lambda: self._db_add(entry), defer=True).add_done_callback(_row_written)
        except BaseException as exc:
            writer.fail(exc)
            self.writers.pop(digest, None)
            self.unreserved.discard(digest)
            self.ctx.bus.emit(events.BLOB_PROGRESS, digest=digest, size=writer.size, state="failed")
            raise
        self.entries[digest] = entry
        self.writers.pop(digest, None)
        self.unreserved.discard(digest)
        writer.complete()
        self.ctx.bus.emit(events.BLOB_ADDED, digest=digest, size=entry.size)
        return entry

    def abort(self, writer: BlobWriter, error: BaseException) -> None:
        digest = str(writer.digest)
        writer.fail(error)
        if self.writers.get(digest) is writer:
            del self.writers[digest]
            self.unreserved.discard(digest)
            self.ctx.bus.emit(events.BLOB_PROGRESS, digest=digest, size=writer.size, state="failed")

    @staticmethod
    def _db_add(entry: BlobEntry) -> None:
        _INSERT_BLOB(entry.digest, entry.size, entry.state, entry.path, entry.media_type, entry.created,
                     entry.last_access)

    async def add_stream(self, chunks: AsyncIterator[bytes], algorithm: str = "sha256",
                         size: int | None = None) -> BlobEntry:
        """Store bytes whose digest is not known in advance (`beiran blobs add`)."""
        tmp = self.tmp_dir / f"upload-{uuid.uuid4().hex}"
        hasher = __import__("hashlib").new(algorithm)
        total = 0
        if size is not None:
            await self.make_room(size)
        fh = await self.ctx.run_blocking(open, tmp, "wb")
        try:
            async for chunk in chunks:
                hasher.update(chunk)
                total += len(chunk)
                await self.ctx.run_blocking(fh.write, chunk)
            await self.ctx.run_blocking(fh.flush)
            await self.ctx.run_blocking(os.fsync, fh.fileno())
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StorageFull(f"cannot store upload: {exc.strerror}") from None
        finally:
            fh.close()
        digest = f"{algorithm}:{hasher.hexdigest()}"
        if digest in self.entries:
            tmp.unlink(missing_ok=True)
            return self.entries[digest]
        final = self.path_for(digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, final)
        now = time.time()
        entry = BlobEntry(digest, total, "complete", None, "", now, now)
        await self.db_batch.write(lambda: self._db_add(entry))
        self.entries[digest] = entry
        self.ctx.bus.emit(events.BLOB_ADDED, digest=digest, size=total)
        return entry

    async def add_external(self, digest: str, path: str, media_type: str = "") -> BlobEntry | None:
        """Index a read-only blob kept elsewhere (e.g. containerd's content store) after verifying it."""
        d = parse_digest(digest)
        if digest in self.entries:
            return self.entries[digest]

        def verify() -> int | None:
            h, n = d.hasher(), 0
            with open(path, "rb") as fh:
                while chunk := fh.read(READ_CHUNK):
                    h.update(chunk)
                    n += len(chunk)
            return n if h.hexdigest() == d.hex else None

        size = await self.ctx.run_blocking(verify)
        if size is None:
            log.warning("store: external blob %s at %s does not match its digest; ignored", d.short, path)
            return None
        now = time.time()
        entry = BlobEntry(digest, size, "external", path, media_type, now, now)
        await self.db_batch.write(lambda: self._db_add(entry))
        self.entries[digest] = entry
        self.ctx.bus.emit(events.BLOB_ADDED, digest=digest, size=size)
        return entry

    # -- reading ---------------------------------------------------------------------------------
    @asynccontextmanager
    async def use(self, digest: str) -> AsyncIterator[BlobEntry | BlobWriter]:
        """Hold a blob (complete or still downloading) so it is not evicted while it is read."""
        d = parse_digest(digest)
        target: BlobEntry | BlobWriter | None = self.entries.get(digest) or self.writers.get(digest)
        if target is None:
            raise BlobNotFound(f"blob {d.short} is not on this node")
        self._in_use[digest] += 1
        try:
            if isinstance(target, BlobEntry):
                target.last_access = time.time()
                self._dirty_access.add(digest)
            yield target
        finally:
            self._in_use[digest] -= 1
            if self._in_use[digest] <= 0:
                del self._in_use[digest]

    def file_of(self, entry: BlobEntry) -> str:
        return entry.path if entry.state == "external" and entry.path else str(self.path_for(entry.digest))

    async def read(self, target: BlobEntry | BlobWriter, start: int = 0, end: int | None = None,
                   chunk_size: int = READ_CHUNK, timeout: float = 60.0) -> AsyncIterator[bytes]:
        """Bytes [start, end) of a blob; for a growing blob, waits for them to arrive."""
        path = self.file_of(target) if isinstance(target, BlobEntry) else str(target.tmp_path)
        end = target.size if end is None else end
        if isinstance(target, BlobEntry) and end is not None and end - start <= chunk_size + SMALL_TAIL:
            # a small stored blob (most .debs and tarballs): open, read, close in one thread hop
            data = await self.ctx.run_blocking(_read_range, path, start, end - start)
            if len(data) != end - start:
                raise UpstreamError(f"blob {target.digest}: unexpected end of file")
            if data:
                yield data
            return
        if isinstance(target, BlobWriter) and target.available == 0 and not target.done.done():
            await target.wait_for_growth(0, timeout)  # its temp file is made by the first write
        try:
            fd = await self.ctx.run_blocking(os.open, path, os.O_RDONLY)
        except FileNotFoundError:
            # the download is being committed (its temp file moved into place) since use(): wait
            # for the commit to finish and read the stored blob
            if not isinstance(target, BlobWriter):
                raise BlobNotFound(f"blob {target.digest[:19]} is no longer on this node") from None
            await asyncio.wait([target.done], timeout=timeout)
            entry = self.entries.get(str(target.digest))
            if entry is None:
                # the download failed and its temp file is gone: say so, typed, not the path
                raise UpstreamError(f"blob {target.digest.short}: the download failed at its source") from None
            target, path = entry, self.file_of(entry)
            end = entry.size if end is None else min(end, entry.size)
            fd = await self.ctx.run_blocking(os.open, path, os.O_RDONLY)
        try:
            pos = start
            while end is None or pos < end:
                if isinstance(target, BlobWriter):
                    if target.available <= pos:
                        if target.done.done() and not target.failed:
                            return  # complete, all read (its size may have become known mid-read)
                        await target.wait_for_growth(pos, timeout)
                    limit = target.available
                else:
                    limit = target.size
                want = min(chunk_size, (end if end is not None else limit) - pos, limit - pos)
                if want <= 0:
                    continue
                data = await self.ctx.run_blocking(os.pread, fd, want, pos)
                if not data:
                    raise UpstreamError(f"blob {target.digest}: unexpected end of file")
                pos += len(data)
                yield data
        finally:
            os.close(fd)

    async def remove(self, digest: str, force: bool = False) -> None:
        d = parse_digest(digest)
        entry = self.entries.get(digest)
        if entry is None:
            raise BlobNotFound(f"blob {d.short} is not stored")
        if self._in_use.get(digest):
            raise Conflict(f"blob {d.short} is being read")
        if self.pins.get(digest) and not force:
            holders = ", ".join(sorted(f"{o}:{r}" for o, r in self.pins[digest]))
            raise Conflict(f"blob {d.short} is pinned by {holders} (use --force)")
        del self.entries[digest]
        if entry.state == "complete":
            await self.ctx.run_blocking(lambda: self.path_for(d).unlink(missing_ok=True))
        self.pins.pop(digest, None)
        await self.db_batch.flush()  # a queued insert of this blob must not land after the delete
        await self.ctx.run_db(lambda: (Blob.delete().where(Blob.digest == digest).execute(),
                                       BlobRef.delete().where(BlobRef.digest == digest).execute()))
        self.ctx.bus.emit(events.BLOB_REMOVED, digest=digest, size=entry.size)
