"""HTTP routes of the npm plugin (all under /npm/).

npm clients (from `client_cidrs`): `GET /npm/<name>` (packument, full or abbreviated as asked),
`GET /npm/<name>/<version|tag>`, `GET /npm/[...]<name>/-/<file>.tgz` (tarball), `GET /npm/-/ping`.
Everything else npm sends (publish, login, audit, dist-tag, search, whoami...) is refused with a
message or, with `writes = "forward"`, forwarded to the upstream unchanged.
Admin (unix socket): `/npm/-/beiran/{info,packages,warm}`. Peers: `/npm/-/beiran/peer/packument/...`.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any
from urllib.parse import unquote

from beiran import offline
from beiran.access import Access
from beiran.errors import BadRequest, BeiranError, NotFound
from beiran.handlers import BaseHandler, JSONEndpoint
from beiran_plugins.npm import tarballs, warm
from beiran_plugins.npm.metadata import ABBREVIATED, resolve_ref, rewrite, rewrite_version
from beiran_plugins.npm.names import parse_path, validate_name
from beiran_plugins.npm.panel import PackagesPanel
from beiran_plugins.npm.upstream import packument_headers_kind

_HOST = re.compile(r"^[A-Za-z0-9.\-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$")
STALE_WARNING = '110 beiran "stale: the upstream registry could not be reached"'


class WritesRefused(BeiranError):
    status, code = 405, "writes_refused"


class NpmHandler(BaseHandler):
    """npm shows a registry's `error` field: put the readable message there."""

    def error_body(self, status: int, exc: BaseException | None) -> dict[str, Any]:
        body = super().error_body(status, exc)
        return {"error": body.get("message") or body.get("error"), "code": body.get("error"),
                **({"details": body["details"]} if "details" in body else {})}


class RegistryHandler(NpmHandler):
    access = Access.CLIENT

    def base_url(self) -> str:
        host = self.request.host or ""
        if not _HOST.match(host):
            cfg = self.ctx.config
            host = f"{cfg.listen_host}:{cfg.listen_port}"
        return f"{self.request.protocol}://{host}/npm"

    async def head(self, rest: str | None) -> None:
        await self.get(rest, head=True)

    async def get(self, rest: str | None, head: bool = False) -> None:
        plugin = self.plugin
        rest = rest or ""
        if not rest:
            self.write_json({"db_name": "beiran-npm", "upstream": plugin.upstream.url})
            return
        what = parse_path(rest, plugin.allow_uppercase)
        if what.kind == "special":
            if what.ref in ("ping", "ping/"):
                self.write_json({})
                return
            await self.pass_through(rest)
            return
        if what.kind == "tarball":
            await tarballs.serve_tarball(self, plugin, what.name, what.ref, head)
            return
        if what.kind == "version":
            p = await plugin.packuments.get(what.name, "full")
            version = resolve_ref(p.doc, what.ref)
            if version is None:
                raise NotFound(f"{what.name}@{what.ref} is not in the registry")
            doc = rewrite_version(p.manifest(version) or {}, what.name, version, self.base_url())
            self._send_doc(json.dumps(doc).encode(), "application/json", p.stale, p.offline)
            return
        kind = packument_headers_kind(self.request.headers.get("Accept"))
        p = await plugin.packuments.get(what.name, kind)
        base = self.base_url()
        body = await plugin.packuments.run_json(lambda: json.dumps(rewrite(p.doc, what.name, base)).encode(),
                                                p.size)
        plugin.count("packuments_served")
        self._send_doc(body, ABBREVIATED if kind == "abbr" else "application/json", p.stale, p.offline)
        plugin.prefetcher.hint(p.doc)  # npm asks for the tarball once it resolved the whole tree

    def _send_doc(self, body: bytes, content_type: str, stale: bool, offline_answer: str | None = None) -> None:
        etag = '"' + hashlib.sha256(body).hexdigest()[:40] + '"'
        self.set_header("ETag", etag)
        self.set_header("Vary", "Accept")
        if stale:
            self.set_header("Warning", STALE_WARNING)
        if offline_answer:
            self.set_header(offline.HEADER, offline_answer)
        if etag in (self.request.headers.get("If-None-Match") or ""):
            self.set_status(304)
            self.finish()
            return
        self.set_header("Content-Type", content_type)
        self.finish(body)

    # -- everything that is not a package read ------------------------------------------------
    async def put(self, rest: str | None) -> None:
        await self.pass_through(rest or "")

    async def post(self, rest: str | None) -> None:
        await self.pass_through(rest or "")

    async def delete(self, rest: str | None) -> None:
        await self.pass_through(rest or "")

    async def patch(self, rest: str | None) -> None:
        await self.pass_through(rest or "")

    async def pass_through(self, rest: str) -> None:
        plugin = self.plugin
        method = self.request.method or "GET"
        command = (self.request.headers.get("npm-command") or "").strip()[:40]
        if plugin.writes != "forward":
            what = f"npm {command}" if command else f"{method} /npm/{rest[:80]}"
            raise WritesRefused(
                f"{what} is not handled by Beiran's npm proxy, which only serves package reads; "
                f"send it to {plugin.upstream.url} directly (--registry {plugin.upstream.url}/) "
                'or set [plugins.npm] writes = "forward"')
        raw_path = self.request.path[len("/npm/"):]
        query = f"?{self.request.query}" if self.request.query else ""
        status, headers, body = await plugin.upstream.forward(method, raw_path + query,
                                                             dict(self.request.headers.get_all()),
                                                             self.request.body or None)
        plugin.count("forwarded")
        self.set_status(status)
        for k, v in headers.items():
            self.set_header(k, v)
        self.finish(body)


class InfoHandler(NpmHandler):
    def get(self) -> None:
        self.write_json(self.plugin.info())


class PackagesHandler(NpmHandler):
    async def get(self) -> None:
        cluster = self.get_query_argument("all", "false").lower() in ("1", "true", "yes")
        self.write_json({"packages": await self.plugin.packages(cluster)})


class WarmHandler(JSONEndpoint, NpmHandler):
    """`POST /npm/-/beiran/warm` {"packages": [spec...], "deps": bool} or {"lockfile": [entries]}:
    NDJSON progress lines, the last one the summary."""

    max_body_size = 64 << 20

    async def post(self) -> None:
        body = self.json_object()
        specs, entries = body.get("packages") or [], body.get("lockfile")
        if not isinstance(specs, list) or not all(isinstance(s, str) for s in specs):
            raise BadRequest("packages must be a list of PACKAGE[@RANGE] strings")
        if entries is not None and not isinstance(entries, list):
            raise BadRequest("lockfile must be a list of {name, version, integrity}")
        if not specs and not entries:
            raise BadRequest("nothing to warm: give packages or a lockfile")
        self.set_header("Content-Type", "application/x-ndjson")
        self.write(json.dumps({"stage": "resolving", "packages": len(specs) + len(entries or [])}) + "\n")
        await self.flush()
        targets, errors = await warm.resolve(self.plugin, specs, bool(body.get("deps", True)))
        targets += warm.lockfile_targets(entries or [])
        async for event in warm.warm(self.plugin, list(dict.fromkeys(targets)), errors):
            self.write(json.dumps(event) + "\n")
            await self.flush()
        self.finish()


class PreheatHandler(JSONEndpoint, NpmHandler):
    """`POST /npm/-/beiran/preheat` {"packages": [spec...], "deps": bool, "nodes": "all" | [uuid]}:
    the chosen nodes fetch the tarballs now; NDJSON per-node progress, the last line the summary."""

    async def post(self) -> None:
        from beiran import preheat

        body = self.json_object()
        specs = body.get("packages") or []
        if not specs or not isinstance(specs, list) or not all(isinstance(s, str) for s in specs):
            raise BadRequest("packages must be a non-empty list of PACKAGE[@RANGE] strings")
        nodes = await preheat.targets(self.ctx, body.get("nodes", "all"))
        found, errors = await warm.resolve(self.plugin, specs, bool(body.get("deps", True)))
        if errors:  # the answer's status is the error to act on first: bad input, then the upstream
            first = min(errors, key=lambda e: (e["status"] == 404, e["status"] >= 500))
            raise BeiranError("; ".join(f"{e['package']}: {e['error']}" for e in errors[:5]),
                              status=first["status"], code=first["code"])
        items = []
        for t in found:
            digest, source = await warm.tarball_of(self.plugin, t)
            items.append(preheat.Item(digest, None, source))
        self.set_header("Content-Type", "application/x-ndjson")

        async def emit(event: dict[str, Any]) -> None:
            self.write(json.dumps(event) + "\n")
            await self.flush()

        await emit({"event": "resolved", "packages": [f"{t.name}@{t.version}" for t in found], "nodes": nodes})
        try:
            summary = await preheat.run(self.ctx, items, nodes, emit)
        except BeiranError as exc:
            summary = {"event": "done", "error": exc.to_dict()}
        self.finish(json.dumps(summary) + "\n")


class PeerPackumentHandler(NpmHandler):
    """A peer asks for a stored packument while its upstream is unreachable; the npm clients that
    could read it through /npm/ anyway may too."""

    access = Access.PEER | Access.CLIENT

    async def get(self, kind: str, quoted: str) -> None:
        name = validate_name(unquote(quoted), self.plugin.allow_uppercase)
        got = await self.plugin.packuments.for_peer(name, kind)
        if got is None:
            raise NotFound(f"no stored packument of {name}")
        body, fetched = got
        self.set_header("Content-Type", "application/json")
        self.set_header("X-Beiran-Fetched", str(fetched))
        self.finish(body)


ROUTES = [
    (r"/npm/-/beiran/ui/packages", PackagesPanel),
    (r"/npm/-/beiran/info", InfoHandler),
    (r"/npm/-/beiran/packages", PackagesHandler),
    (r"/npm/-/beiran/warm", WarmHandler),
    (r"/npm/-/beiran/preheat", PreheatHandler),
    (r"/npm/-/beiran/peer/packument/(full|abbr)/([^/]+)", PeerPackumentHandler),
    (r"/npm(?:/(.*))?", RegistryHandler),
]

#: console panels (the page at /ui/ fetches and renders them)
UI_PANELS = [("npm packages", "/npm/-/beiran/ui/packages")]
