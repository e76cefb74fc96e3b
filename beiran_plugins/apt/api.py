"""HTTP routes of the apt plugin on the daemon's own listeners (all under /apt/).

The proxy itself has its own listener (proxy.py); these are for the CLI (admin, unix socket) and for
peers (`/apt/index`: a cached index file, for a node whose upstream is unreachable).
"""

from __future__ import annotations

import json
import time
from typing import Any

from beiran.access import Access
from beiran.errors import BadRequest, BeiranError, NotFound
from beiran.handlers import BaseHandler, JSONEndpoint, RPCEndpoint, rpc_command
from beiran.models.base import dict_rows
from beiran.store.digest import parse_digest
from beiran_plugins.apt.archive import Blob
from beiran_plugins.apt.models import AptDeb, AptPackage, AptRelease, AptSource
from beiran_plugins.apt.panel import DebsPanel


def _truthy(value: str) -> bool:
    return value.lower() in ("1", "true", "yes")


class PackagesHandler(RPCEndpoint):
    """GET: the .debs in this node's store (`?all=1`: and the cluster's, with their holders)."""

    async def get(self) -> None:
        store = self.ctx.store
        await self.ctx.store.db_batch.flush()  # rows written behind are listed too
        rows = await self.ctx.run_db(lambda: dict_rows(AptDeb.select()))
        me = self.ctx.identity.uuid
        out = {r["digest"]: {**r, "nodes": [me]} for r in rows if store.has(r["digest"])}
        if _truthy(self.get_query_argument("all", "false")):
            view = self.ctx.availability.cluster_view()
            for digest, item in view.items():
                holders = [n for n, s in item["nodes"].items() if s == "complete"]
                if digest in out:
                    out[digest]["nodes"] += holders
                elif digest.startswith("sha256:") and holders:
                    out[digest] = {"digest": digest, "size": item["size"], "nodes": holders}
            unknown = [d.split(":", 1)[1] for d, r in out.items() if "package" not in r]

            def names() -> dict[str, dict[str, Any]]:
                found: dict[str, dict[str, Any]] = {}
                for i in range(0, len(unknown), 400):
                    q = AptPackage.select().where(AptPackage.sha256.in_(unknown[i:i + 400]))
                    for p in dict_rows(q):
                        found[p["sha256"]] = p
                return found
            meta = await self.ctx.run_db(names)
            for digest, r in list(out.items()):
                if "package" in r:
                    continue
                p = meta.get(digest.split(":", 1)[1])
                if p is None:
                    del out[digest]  # a blob of another plugin
                    continue
                r.update(package=p["package"], version=p["version"], arch=p["arch"],
                         filename=p["path"].rsplit("/", 1)[-1], via="cluster")
        items = sorted(out.values(), key=lambda r: (r.get("package", ""), r.get("version", "")))
        self.write_json({"packages": items})

    @rpc_command
    async def have(self) -> dict[str, Any]:
        digests = self.json_object().get("digests")
        if not isinstance(digests, list) or len(digests) > 100_000:
            raise BadRequest("have needs {\"digests\": [...]}")
        return {"have": [d for d in digests if isinstance(d, str) and self.ctx.store.has(d)]}

    @rpc_command
    async def register(self) -> dict[str, Any]:
        """After `beiran apt import` uploaded a .deb apt's records vouch for: pin and list it."""
        body = self.json_object()
        digest = str(parse_digest(str(body.get("digest", ""))))
        entry = self.ctx.store.get(digest)
        if entry is None:
            raise NotFound(f"{digest[:19]} is not in this node's store: upload it first")
        fields = {k: str(body.get(k) or "")[:256] for k in ("package", "version", "arch", "filename")}
        blob = Blob(digest, entry.size, "", fields["filename"] or digest, fields["package"], fields["version"],
                    fields["arch"])
        await self.plugin.archive.record_deb(blob, via="import")
        return {"digest": digest, "size": entry.size, "pinned": True}


class SourcesHandler(JSONEndpoint):
    async def get(self) -> None:
        def rows() -> list[dict[str, Any]]:
            out = []
            for s in dict_rows(AptSource.select().order_by(AptSource.key)):
                s["packages"] = AptPackage.select().where(AptPackage.base == s["key"]).count()
                s["releases"] = [{"url": r.url, "trust": r.trust, "signer": r.signer, "fetched": r.fetched,
                                  "by_hash": r.by_hash, "files": len(r.entries or {})}
                                 for r in AptRelease.select().where(AptRelease.base == s["key"])]
                out.append(s)
            return out
        sources = await self.ctx.run_db(rows)
        self.write_json({"sources": sources, "now": time.time(),
                         "trusted_sources": self.plugin.cfg.trusted_sources,
                         "counters": dict(self.plugin.stats + self.plugin.archive.stats)})


class ProxyAddressHandler(JSONEndpoint):
    """`GET /apt/proxy`: the proxy's address as this daemon bound it (for `beiran apt configure`
    and `proxy-detect`, which must point apt at the running daemon, not at a config file). Admin."""

    async def get(self) -> None:
        self.write_json(self.plugin.proxy_address())


class PreheatHandler(JSONEndpoint):
    """`POST /apt/preheat` {"packages": ["PKG[=VERSION]"...], "arch": str | null, "nodes": "all" | [uuid],
    "with_deps": bool, "include_required": bool, "max_packages": int | null} (admin): the chosen nodes
    fetch the .debs (and, with_deps, what they depend on) now; NDJSON per-node progress, the last line
    the summary (with_deps: also "added", "skipped", "unresolved"). A package this node's indexes do
    not list, or a closure over the cap, is an error before anything starts."""

    async def post(self) -> None:
        from beiran_plugins.apt.preheat import preheat

        body = self.json_object()
        streaming = False

        async def emit(event: dict[str, Any]) -> None:
            nonlocal streaming
            if not streaming:
                self.set_header("Content-Type", "application/x-ndjson")
                streaming = True
            self.write(json.dumps(event) + "\n")
            await self.flush()

        try:
            summary = await preheat(self.plugin, body.get("packages"), body.get("arch"), body.get("nodes", "all"),
                                    emit, body.get("with_deps", False), body.get("include_required", False),
                                    body.get("max_packages"))
        except BeiranError as exc:
            if not streaming:
                raise  # nothing sent yet: an ordinary error answer
            summary = {"event": "done", "error": exc.to_dict()}
        self.finish(json.dumps(summary) + "\n")


class PeerIndexHandler(BaseHandler):
    """`GET /apt/index?url=U`: this node's cached copy of an index file, for a peer cut off from U."""

    access = Access.PEER

    async def get(self) -> None:
        url = self.get_query_argument("url", "")
        if not url or len(url) > 4096:
            raise BadRequest("url query argument required")
        entry = await self.plugin.indexes.cache.get(url)
        if entry is None:
            raise NotFound("no cached copy of that index on this node")
        if entry.last_modified:
            self.set_header("Last-Modified", entry.last_modified)
        self.set_header("Content-Type", "application/octet-stream")
        self.set_header("Content-Length", str(entry.size))
        fh = await self.ctx.run_blocking(open, entry.path, "rb")
        try:
            while data := await self.ctx.run_blocking(fh.read, 1 << 20):
                self.write(data)
                await self.flush()
        finally:
            fh.close()
        self.finish()


ROUTES = [
    (r"/apt/ui/debs", DebsPanel),
    (r"/apt/packages", PackagesHandler),
    (r"/apt/sources", SourcesHandler),
    (r"/apt/index", PeerIndexHandler),
    (r"/apt/proxy", ProxyAddressHandler),
    (r"/apt/preheat", PreheatHandler),
]

#: console panels (the page at /ui/ fetches and renders them)
UI_PANELS = [("apt packages", "/apt/ui/debs")]
