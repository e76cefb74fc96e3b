"""HTTP routes of the dns plugin (all under /dns/, admin socket only)."""

from __future__ import annotations

from beiran.errors import BadRequest, ConfigError, UpstreamError
from beiran.handlers import BaseHandler
from beiran_plugins.dns.lookup import LookupFailed
from beiran_plugins.dns.settings import parse_name
from beiran_plugins.dns.targets import endpoint_url


class StatusHandler(BaseHandler):
    """Each configured name with its last answer, and each target with what became of it."""

    def get(self) -> None:
        self.write_json(self.plugin.report())


class LookupHandler(BaseHandler):
    """`GET /dns/lookup?name=NAME`: look a name up now, with this daemon's nameservers."""

    async def get(self) -> None:
        raw = self.get_query_argument("name", "")
        try:
            name = parse_name(raw, self.plugin.settings.port)
        except ConfigError as exc:
            raise BadRequest(str(exc.message).replace("[plugins.dns] names: ", "")) from None
        try:
            result = await self.plugin.lookup_once(name)
        except LookupFailed as exc:
            raise UpstreamError(str(exc)) from None
        self.write_json({"name": name.label, "type": "SRV" if name.srv else "A/AAAA", "ttl": result.ttl,
                         "targets": [endpoint_url(ip, port) for ip, port in result.endpoints]})


class RefreshHandler(BaseHandler):
    """`POST /dns/refresh`: look the configured names up now instead of at the next interval."""

    def post(self) -> None:
        self.plugin.refresh_now()
        self.write_json({"ok": True})


ROUTES: list = [
    (r"/dns/status", StatusHandler),
    (r"/dns/lookup", LookupHandler),
    (r"/dns/refresh", RefreshHandler),
]
