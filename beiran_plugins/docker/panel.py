"""The docker plugin's console panel: images on this node and which nodes hold each whole."""

from __future__ import annotations

from typing import Any

from beiran.ui.panel import PanelHandler
from beiran_plugins.docker import images


class ImagesPanel(PanelHandler):
    async def table(self) -> dict[str, Any]:
        blobs_of = {r["digest"]: [r["digest"], *(b["digest"] for b in [r["config"] or {}, *r["layers"]]
                                                  if b.get("digest"))]
                    for r in await images.records(self.plugin)}
        rows = [[img["ref"], img["platform"] or "", img["size"],
                 f"{img['blobs_local']}/{img['layers'] + (1 if img['config'] else 0)}",
                 self.holders(blobs_of.get(img["digest"], []))]
                for img in await images.local_images(self.plugin)]
        return {"columns": ["Image", "Platform", "Size", "Blobs here", "Held whole by"],
                "kinds": ["text", "text", "bytes", "text", "mono"], "rows": rows,
                "empty": "No image pulled through this node yet."}
