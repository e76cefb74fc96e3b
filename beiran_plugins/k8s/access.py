"""Private images: their blobs never go to peers; every node shows its own access at its registry.

A pull with credentials is an access check at the registry. When the registry refuses anonymous
access, the image is private: its blobs are restricted to their scope (`registry/repository`) and
core's `GET /blobs/<digest>` refuses them to every peer (`policy()`, as the store also refuses any
blob read with credentials). Peers used to send self-asserted grants ("I read this repository just
now"); nothing a node receives can prove that, and a grant cannot be checked without handing the
verifier a credential, so grants are not accepted at all: each node proves its access to its own
registry by reading the private blobs there itself, with the credentials kubelet gave it. A blob
that also belongs to a public image is not secret and is served to anyone, as before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from beiran.models.base import dict_rows
from beiran_plugins.k8s.models import K8sImage, K8sPrivateBlob

if TYPE_CHECKING:
    from beiran.context import DaemonContext


class AccessPolicy:
    def __init__(self, ctx: DaemonContext) -> None:
        self.ctx = ctx
        self.private: dict[str, set[str]] = {}  # blob digest -> private scopes it belongs to
        self.public: set[str] = set()  # blobs seen in a public image

    async def load(self) -> None:
        """Read restrictions before the daemon serves its first blob."""
        def db() -> tuple[list[dict], list[dict]]:
            return (dict_rows(K8sImage.select(K8sImage.blobs, K8sImage.digest, K8sImage.index_digest)
                              .where(K8sImage.private == False)),  # noqa: E712 - peewee expression
                    dict_rows(K8sPrivateBlob.select()))
        public, private = await self.ctx.run_db(db)
        for row in public:
            digests = [b["digest"] for b in row["blobs"] or []] + [row["digest"], row["index_digest"]]
            self.public.update(d for d in digests if d)
        for row in private:
            self.private.setdefault(row["digest"], set()).add(row["scope"])

    async def mark(self, scope: str, digests: list[str], private: bool) -> None:
        """Record what a pull learnt: these blobs belong to a private (or a public) image."""
        if not private:
            self.public.update(digests)
            await self.ctx.store.release(digests)  # anyone can read them: not private after all
            return
        for d in digests:
            self.private.setdefault(d, set()).add(scope)
        rows = [{"digest": d, "scope": scope} for d in digests]
        await self.ctx.run_db(lambda: K8sPrivateBlob.insert_many(rows).on_conflict_ignore().execute())

    def restricted(self, digest: str) -> set[str]:
        """The private scopes guarding `digest` (empty: anyone may have it)."""
        if digest in self.public:
            return set()
        return self.private.get(digest, set())

    def policy(self, digest: str, peer: str | None) -> str | None:
        """The store's access policy: None to serve, or why not."""
        scopes = self.restricted(digest)
        if not scopes:
            return None
        return (f"blob {digest[:19]} belongs to private image(s) {', '.join(sorted(scopes))}; every node "
                "reads private images from their registry with its own credentials")

    def info(self, scope: str, digests: list[str]) -> dict[str, Any]:
        """For ImageStatus(verbose)."""
        return {"private": any(self.restricted(d) for d in digests)}
