"""HTTP routes of the zeroconf plugin (all under /zeroconf/, admin socket only)."""

from __future__ import annotations

from beiran.handlers import BaseHandler


class StatusHandler(BaseHandler):
    """What this node announces and every `_beiran._tcp` service it has heard, with its state."""

    def get(self) -> None:
        self.write_json(self.plugin.report())


ROUTES: list = [
    (r"/zeroconf/status", StatusHandler),
]
