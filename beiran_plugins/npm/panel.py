"""The npm plugin's console panel: the tarballs this node stored, by package, and who holds them."""

from __future__ import annotations

from typing import Any

from beiran.ui.panel import PanelHandler


class PackagesPanel(PanelHandler):
    async def table(self) -> dict[str, Any]:
        rows = [[f"{p['name']}@{p['version']}", p["size"], self.holders([p["digest"]])]
                for p in await self.plugin.packages()]
        return {"columns": ["Package", "Size", "Held by"], "kinds": ["text", "bytes", "mono"], "rows": rows,
                "empty": "No npm tarball fetched through this node yet."}
