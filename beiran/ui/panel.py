"""The base of plugins' console panels: a read-only JSON table the page renders as it is.

A plugin lists its panels in its api.py (`UI_PANELS = [(title, url)]`) and serves each with a
subclass of `PanelHandler`; the core page knows no plugin. The table is
`{"columns": [...], "kinds": ["text" | "bytes" | "mono", ...], "rows": [[...]], "empty": "..."}`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from beiran.ui.handlers import UIBase

MAX_ROWS = 2000


class PanelHandler(UIBase):
    title = ""

    async def table(self) -> dict[str, Any]:
        raise NotImplementedError

    async def get(self) -> None:
        data = await self.table()
        data["rows"] = data.get("rows", [])[:MAX_ROWS]
        self.write_json(data)

    def holders(self, digests: Iterable[str]) -> list[str]:
        """Nodes (short UUIDs, this node first) holding every one of `digests` complete."""
        digests = [d for d in digests if d]
        if not digests:
            return []
        me, store, avail = self.ctx.identity.uuid, self.ctx.store, self.ctx.availability
        nodes = set(avail.holders(digests[0])[0])
        for d in digests[1:]:
            nodes &= set(avail.holders(d)[0])
        out = [me[:8]] if all(store.has(d) for d in digests) else []
        return out + sorted(n[:8] for n in nodes)
