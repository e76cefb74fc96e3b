"""What the store keeps and what it may drop: plugins' pins, and least-recently-used eviction of
unpinned blobs under `store.max_size` and the free-disk reserve. A mixin of BlobStore, apart so
that the policy reads on its own."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from beiran.errors import StorageFull
from beiran.models.blob import Blob, BlobRef
from beiran.store.dbbatch import Insert
from beiran.store.digest import parse_digest

if TYPE_CHECKING:
    from beiran.context import DaemonContext
    from beiran.store.blobstore import BlobEntry
    from beiran.store.dbbatch import WriteBatcher
    from beiran.store.writer import BlobWriter

log = logging.getLogger("beiran.store.blobstore")
#: how long a look at the free disk space stands in for a new one (when it shows room enough)
DISK_LOOK_SECONDS = 1.0
_INSERT_PIN = Insert(BlobRef, ("digest", "owner", "ref"), "IGNORE")
_UPDATE_ACCESS = (f'UPDATE "{Blob._meta.table_name}" SET "{Blob.last_access.column_name}" = ? '
                  f'WHERE "{Blob.digest.column_name}" = ?')


class Retention:
    ctx: DaemonContext
    root: Path
    entries: dict[str, BlobEntry]
    writers: dict[str, BlobWriter]
    unreserved: set[str]
    pins: dict[str, set[tuple[str, str]]]
    _in_use: Counter[str]
    _dirty_access: set[str]
    db_batch: WriteBatcher
    _disk_seen: tuple[float, int] | None = None  # (when, free bytes) at the last look
    _disk_claimed = 0  # bytes room was made for since

    if TYPE_CHECKING:  # provided by BlobStore
        def total_size(self) -> int: ...
        async def remove(self, digest: str, force: bool = False) -> None: ...
        async def reconcile(self) -> dict[str, int]: ...

    async def pin(self, digest: str, owner: str, ref: str, *, defer: bool = False) -> None:
        """Pinned in memory at once (eviction asks there); `defer`: its row may wait for the next
        batch of rows (see WriteBatcher.submit)."""
        parse_digest(digest)
        self.pins.setdefault(digest, set()).add((owner, ref))
        await asyncio.shield(self.db_batch.submit(lambda: _INSERT_PIN(digest, owner, ref), defer=defer))

    async def unpin(self, owner: str, ref: str, digest: str | None = None) -> None:
        for d, holders in list(self.pins.items()):
            if digest is not None and d != digest:
                continue
            holders.discard((owner, ref))
            if not holders:
                del self.pins[d]

        def db() -> None:
            q = BlobRef.delete().where((BlobRef.owner == owner) & (BlobRef.ref == ref))
            if digest is not None:
                q = q.where(BlobRef.digest == digest)
            q.execute()
        await self.db_batch.write(db)

    def evictable(self) -> list[BlobEntry]:
        return sorted((e for e in self.entries.values()
                       if e.state == "complete" and not self.pins.get(e.digest)
                       and not self._in_use.get(e.digest)), key=lambda e: e.last_access)

    async def make_room(self, size: int, evict: bool = True) -> None:
        """Evict least-recently-used unpinned blobs so `size` more bytes fit; else StorageFull.

        Nothing is evicted when eviction could not make enough room anyway, nor ever with
        `evict=False` (a size only a peer claimed: it must fit as things are). Writers of such
        claims reserve nothing, so a claim cannot make a later local fetch evict either."""
        cap = self.ctx.config.store.max_size
        reserve = self.ctx.config.store.reserve_free
        pending = sum((w.size or 0) - w.available for d, w in self.writers.items() if d not in self.unreserved)

        def freeable() -> int:
            # sorting every blob is paid only when something must go (not once per small blob)
            return sum(e.size for e in self.evictable()) if evict else 0

        if cap is not None:
            if size > cap:
                raise StorageFull(f"blob of {size} bytes is larger than store.max_size ({cap})")
            excess = self.total_size() + pending + size - cap
            if excess > 0 and excess > freeable():
                if not evict:
                    raise StorageFull(f"no room for {size} claimed bytes under store.max_size ({cap}) "
                                      "without evicting, and a peer's claim evicts nothing")
                raise StorageFull(f"store.max_size ({cap} bytes) reached: the rest is pinned or in use")
            if excess > 0:
                await self._evict(excess)
        free = self._free_estimate()
        if free is None or size + reserve + pending - free > 0:  # not surely enough: look
            free = await self._disk_free()
        self._disk_claimed += size
        short = size + reserve + pending - free
        if short > 0:
            if short > freeable():
                raise StorageFull(f"not enough disk space for {size} bytes in {self.root} "
                                  f"({free} free, {reserve} kept in reserve)")
            await self._evict(short)

    def _free_estimate(self) -> int | None:
        """Free disk bytes at the last look (under DISK_LOOK_SECONDS ago) less every size room
        was made for since: never more than what is free now. A look is a thread hop and a
        statfs(2), paid once a second rather than once per small blob."""
        seen = self._disk_seen
        if seen is None or time.monotonic() - seen[0] > DISK_LOOK_SECONDS:
            return None
        return seen[1] - self._disk_claimed

    def free_seen(self) -> int | None:
        """Free disk bytes at the last look (however old) less what room was made for since;
        None before the first look. For bounds that must cost no statfs(2) of their own."""
        seen = self._disk_seen
        return None if seen is None else seen[1] - self._disk_claimed

    async def _disk_free(self) -> int:
        free = (await self.ctx.run_blocking(shutil.disk_usage, self.root)).free
        self._disk_seen, self._disk_claimed = (time.monotonic(), free), 0
        return free

    async def _evict(self, need: int) -> int:
        freed = 0
        victims = []
        for e in self.evictable():
            if freed >= need:
                break
            victims.append(e)
            freed += e.size
        for e in victims:
            await self.remove(e.digest)
        if victims:
            log.info("store: evicted %d blobs (%d bytes)", len(victims), freed)
        return freed

    async def gc(self) -> dict[str, int]:
        """Evict down to max_size, and re-check index against files."""
        cap = self.ctx.config.store.max_size
        evicted = 0
        if cap is not None and self.total_size() > cap:
            evicted = await self._evict(self.total_size() - cap)
        result = await self.reconcile()
        result["evicted_bytes"] = evicted
        return result

    # -- last access, for LRU: kept in memory, written to the index every 30 s ----------------
    async def _persist_access_loop(self) -> None:
        while True:
            await asyncio.sleep(30)
            await self._flush_access()

    async def _flush_access(self) -> None:
        dirty, self._dirty_access = self._dirty_access, set()
        rows = [(d, self.entries[d].last_access) for d in dirty if d in self.entries]
        if rows:
            await self.db_batch.flush()  # rows written behind exist before they are updated
            def db() -> None:
                database = Blob._meta.database
                with database.atomic():  # one statement, made once, for every row
                    database.cursor().executemany(_UPDATE_ACCESS, [(ts, d) for d, ts in rows])
            await self.ctx.run_db(db)
