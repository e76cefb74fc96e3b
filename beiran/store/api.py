"""Admin blob routes (unix socket only): list, stats, upload, fetch through the cluster, rm, gc."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import tornado.web

from beiran.errors import BadRequest, BeiranError
from beiran.handlers import BaseHandler, RPCEndpoint, rpc_command
from beiran.store.digest import ALGORITHMS, parse_digest


class BlobsHandler(RPCEndpoint):
    async def get(self) -> None:
        blobs = self.ctx.store.list()
        if self.get_query_argument("all", "false").lower() in ("1", "true", "yes"):
            view = self.ctx.availability.cluster_view()
            for b in blobs:
                b["nodes"] = {self.ctx.identity.uuid: "complete",
                              **view.pop(b["digest"], {}).get("nodes", {})}
            for digest, item in sorted(view.items()):
                blobs.append({"digest": digest, "size": item["size"], "state": "remote",
                              "nodes": item["nodes"]})
        self.write_json({"blobs": blobs})

    @rpc_command
    async def fetch(self) -> None:
        """Fetch through the cluster, streaming NDJSON progress lines, the last one the result."""
        body = self.json_object()
        digest = str(parse_digest(str(body.get("digest", ""))))
        size = body.get("size")
        if size is not None and (not isinstance(size, int) or size < 0):
            raise BadRequest("size must be a non-negative integer")
        source = body.get("source")
        if source is not None and not isinstance(source, dict):
            raise BadRequest("source must be an object")
        job = await self.ctx.fetcher.start(digest, size, source)
        self.set_header("Content-Type", "application/x-ndjson")
        while not job.done.done():
            self.write(json.dumps(job.progress()) + "\n")
            await self.flush()
            await asyncio.wait([job.done], timeout=0.2)
        final = job.progress()
        if job.failed:
            exc = job.done.exception()
            final["error"] = exc.to_dict() if isinstance(exc, BeiranError) else {"message": str(exc)}
        final["done"] = True
        self.finish(json.dumps(final) + "\n")

    @rpc_command
    async def rm(self) -> dict[str, Any]:
        body = self.json_object()
        await self.ctx.store.remove(str(parse_digest(str(body.get("digest", "")))), bool(body.get("force")))
        return {"removed": body["digest"]}

    @rpc_command
    async def gc(self) -> dict[str, Any]:
        return await self.ctx.store.gc()


class BlobStatsHandler(BaseHandler):
    def get(self) -> None:
        self.write_json(self.ctx.store.stats())


@tornado.web.stream_request_body
class BlobUploadHandler(BaseHandler):
    """`PUT /blobs/upload?algorithm=sha256`: store the body, answer its digest."""

    def prepare(self) -> None:
        super().prepare()
        self.algorithm = self.get_query_argument("algorithm", "sha256")
        if self.algorithm not in ALGORITHMS:
            raise BadRequest(f"algorithm must be one of {', '.join(ALGORITHMS)}")
        self.http_connection().set_max_body_size(1 << 62)
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=8)
        length = self.request.headers.get("Content-Length")
        size = int(length) if length and length.isdigit() else None
        self._task = asyncio.ensure_future(self.ctx.store.add_stream(self._chunks(), self.algorithm, size))

    async def _chunks(self) -> AsyncIterator[bytes]:
        while (chunk := await self._queue.get()) is not None:
            yield chunk

    async def data_received(self, chunk: bytes) -> None:
        if self._task.done():
            return
        await self._queue.put(chunk)

    async def put(self) -> None:
        if not self._task.done():
            await self._queue.put(None)
        entry = await self._task
        self.write_json({"digest": entry.digest, "size": entry.size})

    def on_connection_close(self) -> None:
        if hasattr(self, "_task") and not self._task.done():
            self._task.cancel()


ROUTES = [
    (r"/blobs", BlobsHandler),
    (r"/blobs/stats", BlobStatsHandler),
    (r"/blobs/upload", BlobUploadHandler),
]
