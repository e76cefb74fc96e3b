"""HTTP routes of the docker plugin: /docker/... (JSON unless said) plus the /v2/ registry mirror.

Reads are open to peers (cluster token when one is set); pulls and deletes are admin (unix socket).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from beiran.access import Access, check_blob_access
from beiran.errors import BadRequest, BeiranError, NotFound
from beiran.handlers import JSONEndpoint, RPCEndpoint, rpc_command
from beiran.store.digest import parse_digest
from beiran_plugins.docker import archive, images
from beiran_plugins.docker.panel import ImagesPanel
from beiran_plugins.docker.pull import pull, resolve_image
from beiran_plugins.docker.reference import validate_registry, validate_repository, validate_tag
from beiran_plugins.docker.v2 import ROUTES as V2_ROUTES
from beiran_plugins.docker.v2 import serve_blob

log = logging.getLogger("beiran.docker")


def _flag(handler: JSONEndpoint, name: str) -> bool:
    return handler.get_query_argument(name, "false").lower() in ("1", "true", "yes")


def _node(handler: JSONEndpoint) -> str | None:
    node = handler.get_query_argument("node", None)
    if node is not None and (not node or len(node) > 64 or not all(c in "0123456789abcdef-" for c in node.lower())):
        raise BadRequest("node must be a node UUID")
    return node


class TagsHandler(JSONEndpoint):
    """`GET /docker/tags?registry=&repository=&tag=`: this node's last known tag -> digest (for peers)."""

    access = Access.PEER

    async def get(self) -> None:
        registry = validate_registry(self.get_query_argument("registry", ""))
        repository = validate_repository(self.get_query_argument("repository", ""))
        tag = validate_tag(self.get_query_argument("tag", ""))
        row = await self.plugin.mirror.local_tag(registry, repository, tag)
        if row is None:
            raise NotFound(f"no mapping for {registry}/{repository}:{tag}")
        self.write_json(row)


class ImagesHandler(RPCEndpoint):
    access = Access.PEER

    async def get(self) -> None:
        node = _node(self)
        if _flag(self, "all") or node:
            self.write_json({"images": await images.cluster_images(self.plugin, node)})
            return
        engine = self.plugin.engine
        out: dict[str, Any] = {"images": await images.local_images(self.plugin)}
        if engine is not None:
            out["engine"] = {"reachable": engine.reachable, "host": engine.describe(), "error": engine.error or None,
                             "images": engine.images}
        self.write_json(out)

    @rpc_command
    async def pull(self) -> None:
        """NDJSON progress lines; the last one is the summary (or carries the error)."""
        body = self.json_object()
        ref = self.plugin.parse_ref(body.get("ref"))
        platform = body.get("platform")
        if platform is not None and not isinstance(platform, str):
            raise BadRequest("platform must be a string such as linux/amd64")
        load = bool(body.get("load", True))
        self.set_header("Content-Type", "application/x-ndjson")

        async def emit(event: dict[str, Any]) -> None:
            self.write(json.dumps(event) + "\n")
            await self.flush()

        try:
            summary = await pull(self.plugin, ref, platform, emit)
            if load:
                summary.update(await self.plugin.load_into_engine(ref, summary["digest"]))
        except BeiranError as exc:
            summary = {"event": "done", "ref": str(ref), "error": exc.to_dict()}
        self.finish(json.dumps(summary) + "\n")


    @rpc_command
    async def preheat(self) -> None:
        """NDJSON per-node progress; the last line is the summary (or carries the error)."""
        from beiran_plugins.docker.preheat import preheat

        body = self.json_object()
        ref = self.plugin.parse_ref(body.get("ref"))
        platform = body.get("platform")
        if platform is not None and not isinstance(platform, str):
            raise BadRequest("platform must be a string such as linux/amd64")
        self.set_header("Content-Type", "application/x-ndjson")

        async def emit(event: dict[str, Any]) -> None:
            self.write(json.dumps(event) + "\n")
            await self.flush()

        try:
            summary = await preheat(self.plugin, ref, platform, body.get("nodes", "all"), emit)
        except BeiranError as exc:
            summary = {"event": "done", "ref": str(ref), "error": exc.to_dict()}
        self.finish(json.dumps(summary) + "\n")


class ImageInfoHandler(JSONEndpoint):
    access = Access.PEER

    async def get(self, ref: str) -> None:
        self.write_json(await images.info(self.plugin, self.plugin.parse_ref(ref)))


class ImageHandler(JSONEndpoint):
    """GET: the image as a `docker save` archive (streamed); DELETE (admin): rmi."""

    access, method_access = Access.PEER, {"DELETE": Access.ADMIN}

    async def get(self, text: str) -> None:
        ref = self.plugin.parse_ref(text)
        rows = await images.find(self.plugin, ref)
        tags = [t for t in [images.repo_tag({"registry": ref.registry, "repository": ref.repository,
                                             "tag": ref.tag})] if t]
        if rows:
            row = rows[0]
        else:  # not pulled here: resolve it (cluster first) and stream it all the same
            digest, _, parsed, _, _ = await resolve_image(self.plugin, ref, self.get_query_argument("platform", None))
            row = {"registry": ref.registry, "repository": ref.repository, "tag": ref.tag, "digest": digest,
                   "config": parsed.config.to_dict() if parsed.config else None,
                   "layers": [d.to_dict() for d in parsed.layers]}
        members = images.members(row, tags)
        check_blob_access(self, *(m.digest for m in members if m.digest))
        source = self.plugin.mirror.source(ref.registry, ref.repository, "blob")
        self.set_header("Content-Type", "application/x-tar")
        self.set_header("Content-Length", str(archive.archive_size(members)))
        name = (ref.repository.rsplit("/", 1)[-1] + "-" + (ref.tag or row["digest"][7:19]) + ".tar")
        self.set_header("Content-Disposition", f'attachment; filename="{name}"')

        def read(digest: str, size: int):
            return self.ctx.fetcher.stream(digest, size, source)

        try:
            async for chunk in archive.stream(members, read):
                self.write(chunk)
                await self.flush()
        except Exception as exc:  # noqa: BLE001 - headers are gone: cut the body so the client sees it
            log.warning("docker save of %s stopped: %s", ref, exc)
            self.http_connection().close()
            return
        self.finish()

    async def delete(self, text: str) -> None:
        self.write_json(await images.remove(self.plugin, self.plugin.parse_ref(text)))


class LayersHandler(JSONEndpoint):
    access = Access.PEER

    async def get(self) -> None:
        node = _node(self)
        if _flag(self, "all") or node:
            self.write_json({"layers": await images.cluster_layers(self.plugin, node)})
        else:
            self.write_json({"layers": await images.local_layers(self.plugin)})


class LayerHandler(JSONEndpoint):
    """GET/HEAD: the layer bytes, verified, with registry-style headers; DELETE (admin): drop it."""

    access, method_access = Access.PEER, {"DELETE": Access.ADMIN}

    async def head(self, digest: str) -> None:
        await self.get(digest, head=True)

    async def get(self, digest: str, head: bool = False) -> None:
        d = str(parse_digest(digest))
        origin = self.plugin.mirror.blob_repo.get(d)
        source = self.plugin.mirror.source(origin[0], origin[1], "blob") if origin else None
        await serve_blob(self, d, source, head)

    async def delete(self, digest: str) -> None:
        d = str(parse_digest(digest))
        await self.ctx.store.remove(d, force=_flag(self, "force"))
        self.write_json({"removed": d})


ROUTES = [
    (r"/docker/ui/images", ImagesPanel),
    (r"/docker/tags", TagsHandler),
    (r"/docker/images", ImagesHandler),
    (r"/docker/images/(.+)/info", ImageInfoHandler),
    (r"/docker/images/(.+)", ImageHandler),
    (r"/docker/layers", LayersHandler),
    (r"/docker/layers/([^/]+)", LayerHandler),
    *V2_ROUTES,
]

#: console panels (the page at /ui/ fetches and renders them)
UI_PANELS = [("Docker images", "/docker/ui/images")]
