"""`POST /preheat` (admin): the core preheat for blobs named by digest and source, without a plugin
in between (an `[origins]` file, a blob whose source the operator knows). The plugins' preheat
commands call the same `beiran.preheat.run`; NDJSON per-node progress, the last line the summary."""

from __future__ import annotations

import json
from typing import Any

from beiran import preheat
from beiran.errors import BeiranError
from beiran.handlers import JSONEndpoint


class PreheatHandler(JSONEndpoint):
    async def post(self) -> None:
        body = self.json_object()
        items = preheat.parse_items(self.ctx, body.get("blobs"))
        nodes = await preheat.targets(self.ctx, body.get("nodes", "all"))
        self.set_header("Content-Type", "application/x-ndjson")

        async def emit(event: dict[str, Any]) -> None:
            self.write(json.dumps(event) + "\n")
            await self.flush()

        await emit({"event": "nodes", "nodes": nodes})
        try:
            summary = await preheat.run(self.ctx, items, nodes, emit, seed=bool(body.get("seed")))
        except BeiranError as exc:
            summary = {"event": "done", "error": exc.to_dict()}
        self.finish(json.dumps(summary) + "\n")


ROUTES = [(r"/preheat", PreheatHandler)]
