"""Blobs already in containerd's content store, indexed read-only (after verification) so that a node
that pulled before Beiran ran still serves its neighbours, as Spegel does."""

from __future__ import annotations

import asyncio
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from beiran.errors import BeiranError

if TYPE_CHECKING:
    from beiran.context import DaemonContext

log = logging.getLogger("beiran.docker.content")
_HEX = re.compile(r"^[0-9a-f]{64}$")


class ContentIndexer:
    def __init__(self, ctx: DaemonContext, content_dir: str, interval: float) -> None:
        self.ctx = ctx
        self.root = Path(content_dir)
        self.interval = interval
        self.indexed = 0
        self.rejected = 0
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._loop())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()

    async def _loop(self) -> None:
        while True:
            try:
                await self.scan()
            except Exception as exc:  # noqa: BLE001 - a bad scan is retried at the next interval
                log.warning("containerd content scan of %s failed: %s", self.root, exc)
            if self.interval <= 0:
                return
            await asyncio.sleep(self.interval)

    def _list(self) -> list[tuple[str, str]]:
        base = self.root / "blobs" / "sha256"
        if not base.is_dir():
            return []
        return [(f"sha256:{e.name}", e.path) for e in os.scandir(base) if _HEX.match(e.name) and e.is_file()]

    async def scan(self) -> dict[str, int]:
        """Index new blobs (each verified by add_external); forget those containerd removed."""
        files = await self.ctx.run_blocking(self._list)
        present = {d for d, _ in files}
        added = rejected = 0
        store = self.ctx.store
        for digest, path in files:
            if store.has(digest) or store.writing(digest):
                continue
            try:
                entry = await store.add_external(digest, path)
            except (OSError, BeiranError) as exc:
                log.info("containerd blob %s: %s", digest[:19], exc)
                entry = None
            if entry is None:
                rejected += 1
            else:
                added += 1
        prefix = str(self.root)
        gone = [e.digest for e in list(store.entries.values())
                if e.state == "external" and (e.path or "").startswith(prefix) and e.digest not in present]
        for digest in gone:
            try:
                await store.remove(digest, force=True)
            except BeiranError:
                pass
        self.indexed += added
        self.rejected += rejected
        if added or rejected or gone:
            log.info("containerd content %s: %d blobs indexed, %d failed verification, %d gone",
                     self.root, added, rejected, len(gone))
        return {"added": added, "rejected": rejected, "removed": len(gone)}
