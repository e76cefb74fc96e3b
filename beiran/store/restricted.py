"""Restricted blobs: read from their origin with credentials, so they are private. They are never
served to peers (the store's first access policy) whatever a peer claims; only a blob known to be
public too (e.g. the same layer in a public image) is released. A mixin of BlobStore, kept in the
database so a restart changes nothing."""

from __future__ import annotations

from typing import TYPE_CHECKING

from beiran.models.blob import RestrictedBlob
from beiran.store.digest import parse_digest

if TYPE_CHECKING:
    from beiran.context import DaemonContext


class Restrictions:
    ctx: DaemonContext
    restricted: set[str]

    async def load_restrictions(self) -> None:
        rows = await self.ctx.run_db(lambda: [r.digest for r in RestrictedBlob.select()])
        self.restricted.update(rows)

    def is_restricted(self, digest: str) -> bool:
        return digest in self.restricted

    async def restrict(self, digest: str) -> None:
        """Mark `digest` private (recorded before its first byte can be served)."""
        parse_digest(digest)
        if digest in self.restricted:
            return
        self.restricted.add(digest)
        await self.ctx.run_db(lambda: RestrictedBlob.insert(digest=digest).on_conflict_ignore().execute())

    async def release(self, digests: list[str]) -> None:
        """These blobs are public after all (seen in an image anyone can read)."""
        gone = [d for d in digests if d in self.restricted]
        if not gone:
            return
        self.restricted.difference_update(gone)
        await self.ctx.run_db(lambda: RestrictedBlob.delete().where(RestrictedBlob.digest.in_(gone)).execute())

    def restricted_policy(self, digest: str, peer: str | None) -> str | None:
        if digest in self.restricted:
            return (f"blob {digest[:19]} is private (read from its registry with credentials); "
                    "every node reads it from the registry with its own")
        return None
