"""The apt plugin's console panel: the .debs this node stored, by package, and who holds them."""

from __future__ import annotations

from typing import Any

from beiran.models.base import dict_rows
from beiran.ui.panel import PanelHandler
from beiran_plugins.apt.models import AptDeb


class DebsPanel(PanelHandler):
    async def table(self) -> dict[str, Any]:
        await self.ctx.store.db_batch.flush()  # rows written behind are listed too
        debs = await self.ctx.run_db(lambda: dict_rows(AptDeb.select().order_by(AptDeb.package)))
        rows = [[d["package"] or d["filename"], d["version"], d["arch"], d["size"], self.holders([d["digest"]])]
                for d in debs if self.ctx.store.has(d["digest"])]
        return {"columns": ["Package", "Version", "Arch", "Size", "Held by"],
                "kinds": ["text", "text", "text", "bytes", "mono"], "rows": rows,
                "empty": "No .deb fetched through this node yet."}
