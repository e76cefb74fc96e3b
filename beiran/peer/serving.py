"""`GET`/`HEAD /blobs/<digest>` for peers (and, on the unix socket, the local CLI): a stored blob or
one still downloading, as `beiran.serve` allows. No path is ever built from the request except
through parse_digest."""

from __future__ import annotations

from beiran.access import Access
from beiran.handlers import BaseHandler
from beiran.serve import serve_blob
from beiran.store.digest import parse_digest


class BlobHandler(BaseHandler):
    access = Access.PEER

    async def head(self, digest: str) -> None:
        await self.get(digest, head=True)

    async def get(self, digest: str, head: bool = False) -> None:
        d = str(parse_digest(digest))
        self.set_header("Content-Type", "application/octet-stream")
        self.set_header("Docker-Content-Digest", d)
        self.set_header("X-Beiran-Digest", d)
        if head or self.is_unix_socket():  # the local CLI is not a peer
            await serve_blob(self, d, fetch=False, head=head, to_peer=True)
            return
        with self.ctx.uploads.slot():
            await serve_blob(self, d, fetch=False, head=head, to_peer=True)
