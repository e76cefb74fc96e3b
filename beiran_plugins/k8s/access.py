"""Private images: their blobs go only to peers whose node has shown it can read them upstream.

A pull with credentials is an access check at the registry. When the registry refuses anonymous
access, the image is private: its blobs are restricted to its scope (`registry/repository`, the unit
registries grant pull access on). A node that passed the check for a scope sends every peer a grant
(`POST /k8s/grants`, signed with the cluster token, so the receiver knows which node asks); serving
(core's `GET /blobs/<digest>`) consults `policy()` and answers 403 to a node without a live grant.
A blob that also belongs to a public image is not secret and is served to anyone, as before.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from beiran.models.base import dict_rows
from beiran_plugins.k8s.models import K8sGrant, K8sImage, K8sPrivateBlob

if TYPE_CHECKING:
    from beiran.context import DaemonContext

log = logging.getLogger("beiran.k8s")
GRANT_PATH = "/k8s/grants"
GRANT_TIMEOUT = 5.0


class AccessPolicy:
    def __init__(self, ctx: DaemonContext, grant_ttl: float) -> None:
        self.ctx = ctx
        self.grant_ttl = grant_ttl
        self.private: dict[str, set[str]] = {}  # blob digest -> private scopes it belongs to
        self.public: set[str] = set()  # blobs seen in a public image
        self.grants: dict[tuple[str, str], float] = {}  # (node uuid, scope) -> expiry

    async def load(self) -> None:
        """Read restrictions and grants before the daemon serves its first blob."""
        now = time.time()

        def db() -> tuple[list[dict], list[dict], list[dict]]:
            K8sGrant.delete().where(K8sGrant.expires < now).execute()
            return (dict_rows(K8sImage.select(K8sImage.blobs, K8sImage.digest, K8sImage.index_digest)
                              .where(K8sImage.private == False)),  # noqa: E712 - peewee expression
                    dict_rows(K8sPrivateBlob.select()), dict_rows(K8sGrant.select()))
        public, private, grants = await self.ctx.run_db(db)
        for row in public:
            digests = [b["digest"] for b in row["blobs"] or []] + [row["digest"], row["index_digest"]]
            self.public.update(d for d in digests if d)
        for row in private:
            self.private.setdefault(row["digest"], set()).add(row["scope"])
        for g in grants:
            self.grants[(g["node"], g["scope"])] = g["expires"]

    async def mark(self, scope: str, digests: list[str], private: bool) -> None:
        """Record what a pull learnt: these blobs belong to a private (or a public) image."""
        if not private:
            self.public.update(digests)
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
        names = ", ".join(sorted(scopes))
        if peer is None:
            return (f"blob {digest[:19]} belongs to private image(s) {names}; it is served only to nodes "
                    "that prove who they are (cluster_token) and have pulled it with valid credentials")
        now = time.time()
        if any(self.grants.get((peer, s), 0) > now for s in scopes):
            return None
        return (f"blob {digest[:19]} belongs to private image(s) {names}; node {peer[:8]} has not shown it "
                "can read them at the registry")

    async def grant(self, node: str, scope: str) -> float:
        """A peer passed the registry's access check for `scope`."""
        expires = time.time() + self.grant_ttl
        self.grants[(node, scope)] = expires

        def db() -> None:
            K8sGrant.insert(node=node, scope=scope, expires=expires).on_conflict(
                conflict_target=[K8sGrant.node, K8sGrant.scope], update={K8sGrant.expires: expires}).execute()
        await self.ctx.run_db(db)
        log.info("grant: node %s may fetch private blobs of %s", node[:8], scope)
        return expires

    async def announce(self, scope: str, manifest: str) -> dict[str, str]:
        """Tell every online peer this node passed the access check for `scope`; node -> outcome."""
        if not self.ctx.auth or not self.ctx.auth.enabled:
            return {}  # without a cluster token no peer could tell who asks: private blobs stay local
        body = json.dumps({"scope": scope, "manifest": manifest}).encode()
        nodes = list(self.ctx.peers.online())
        results = await asyncio.gather(*(self._post(n, body) for n in nodes))
        return dict(zip(nodes, results, strict=True))

    async def _post(self, node: str, body: bytes) -> str:
        from tornado.httpclient import AsyncHTTPClient, HTTPRequest

        url = self.ctx.peers.url_of(node)
        if not url:
            return "no address"
        headers = {"Content-Type": "application/json", **self.ctx.auth.headers("POST", GRANT_PATH, body)}
        req = HTTPRequest(url + GRANT_PATH, method="POST", body=body, headers=headers,
                          connect_timeout=GRANT_TIMEOUT, request_timeout=GRANT_TIMEOUT)
        try:
            resp = await AsyncHTTPClient().fetch(req, raise_error=False)
        except (OSError, TimeoutError) as exc:
            return f"failed: {exc}"
        if resp.code != 200:
            log.info("grant to %s refused: %s %s", node[:8], resp.code, resp.body[:200])
            return f"refused: {resp.code}"
        return "ok"

    def info(self, scope: str, digests: list[str]) -> dict[str, Any]:
        """For ImageStatus(verbose): who may have this image's blobs."""
        now = time.time()
        return {"private": any(self.restricted(d) for d in digests),
                "granted_nodes": sorted({n for (n, s), exp in self.grants.items() if s == scope and exp > now})}
