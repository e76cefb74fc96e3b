"""`/ui/`: the console page and its JSON feed. GET only, package-client addresses only."""

from __future__ import annotations

from importlib import resources

from beiran.access import Access
from beiran.handlers import BaseHandler
from beiran.ui import state

_TYPES = {"index.html": "text/html; charset=utf-8", "console.js": "text/javascript; charset=utf-8",
          "console.css": "text/css; charset=utf-8"}
# The page runs only its own script and talks only to this node: peer-supplied text (hostnames,
# image names) can never load or run anything, even if rendering were to go wrong.
_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


class UIBase(BaseHandler):
    access = Access.CLIENT

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("Content-Security-Policy", _CSP)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("Cache-Control", "no-cache")


class UIPageHandler(UIBase):
    def get(self, name: str = "") -> None:
        name = name or "index.html"
        self.set_header("Content-Type", _TYPES[name])  # the route admits only these names
        self.finish(resources.files("beiran.ui").joinpath("static", name).read_bytes())


class UIRedirectHandler(UIBase):
    def get(self) -> None:
        self.redirect("/ui/", permanent=False)


class UIStateHandler(UIBase):
    async def get(self) -> None:
        panels = [{"plugin": p, "title": t, "url": u} for p, t, u in self.ctx.plugins.ui_panels()]
        self.write_json(await state.state(self.ctx, panels))


ROUTES = [
    (r"/ui", UIRedirectHandler),
    (r"/ui/(|index\.html|console\.js|console\.css)", UIPageHandler),
    (r"/ui/state", UIStateHandler),
]
