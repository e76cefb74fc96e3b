"""Plugin base classes: the contract every `beiran_plugins.<name>.plugin` module fulfils.

A plugin's lifecycle is init(config) -> start() -> stop(), all async. The daemon records a failure in
any of them on the plugin (status "error" with the text) and carries on with the others.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from beiran.context import DaemonContext


class PluginStatus(StrEnum):
    INIT = "init"
    READY = "ready"
    DEGRADED = "degraded"  # started, but something it needs does not answer (see `health`)
    ERROR = "error"
    DISABLED = "disabled"
    STOPPED = "stopped"


class BasePlugin:
    """Common base. Subclasses set `kind`; `name` defaults to the package name."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "generic"
    version: ClassVar[str] = "0"
    #: route prefixes a plugin may use besides "/<name>/" (the docker mirror needs "/v2/").
    extra_route_prefixes: ClassVar[tuple[str, ...]] = ()
    #: the keys `[plugins.<name>]` may hold (`enabled` is implied); None: check_config is its own
    config_keys: ClassVar[frozenset[str] | None] = None

    @classmethod
    def check_config(cls, config: dict[str, Any]) -> None:
        """Refuse a section this plugin cannot run with, before anything starts: the loader asks it
        before init(), and `beiran config --local` asks it with no daemon running. Raise
        ConfigError; open nothing (no files, sockets or threads)."""
        if cls.config_keys is not None:
            from beiran.config_check import refuse_unknown

            refuse_unknown(cls.name, config, cls.config_keys)

    def __init__(self, ctx: DaemonContext) -> None:
        self.ctx = ctx
        self.config: dict[str, Any] = {}
        self.status = PluginStatus.INIT
        self.error: str | None = None

    async def init(self, config: dict[str, Any]) -> None:
        """Receive (and validate) this plugin's `[plugins.<name>]` section."""
        self.config = config

    async def start(self) -> None:
        """Open listeners, start background tasks. Raise to report an error."""

    async def reconfigure(self, config: dict[str, Any]) -> bool:
        """A changed `[plugins.<name>]` on reload (SIGHUP): apply it and return True, or return False
        when it takes a restart (the default). Raise a BeiranError to refuse it; the running
        settings are kept either way."""
        return False

    async def stop(self) -> None:
        """Undo start(); must not raise."""

    def status_info(self) -> dict[str, Any]:
        """Extra, plugin-specific fields for `GET /status`."""
        return {}

    def counters(self) -> dict[str, int]:
        """Event counts for `/metrics` (`beiran_plugin_events_total{plugin, event}`)."""
        return {}

    async def health(self) -> str | None:
        """Why this plugin cannot do its job right now (e.g. its container runtime is not
        reachable), or None. Asked on each `GET /status`, so keep it to one quick check."""
        return None


class BasePackagePlugin(BasePlugin):
    """A package system (docker, apt, npm): turns client requests into core fetches.

    The one thing core cannot know is how to reach the origin for a blob, so each package plugin
    implements `open_origin`: `params` is the plugin's own source description (e.g. registry and
    repository), never a raw URL, and the plugin resolves it with its own configured upstreams.
    """

    kind: ClassVar[str] = "package"

    def validate_source(self, params: dict[str, Any], *, from_peer: bool) -> dict[str, Any]:
        """Check source params (and return them normalized); raise if unusable. With `from_peer`
        the source arrived in a peer's request: it must resolve against this node's own config
        only (never a host the params name, whatever the plugin allows its own clients)."""
        return params

    async def open_origin(self, params: dict[str, Any], digest: str, offset: int, *,
                          from_peer: bool) -> OriginStream:
        """Bytes of the blob from `offset`. `from_peer`: for a peer's request, so never with this
        node's credentials; a stream read with credentials sets `restricted`."""
        raise NotImplementedError(f"plugin {self.name} cannot fetch from an origin")


class BaseDiscoveryPlugin(BasePlugin):
    """Finds peers; reports them with `self.ctx.peers.discovered(url, via=self.name)` and
    `self.ctx.peers.vanished(url_or_uuid, via=self.name)`."""

    kind: ClassVar[str] = "discovery"

    async def advertise(self, service_type: str, port: int, properties: dict[str, str],
                        only: Callable[[str], bool] | None = None) -> bool:
        """Announce an extra service (e.g. the apt proxy) when the mechanism supports it.

        `only` restricts the announced addresses to those it accepts (see `beiran.advertising`: a
        listener is announced only where it listens and admits the clients); it is asked again
        whenever the node's addresses change, and when it accepts none the service is not announced
        (or is withdrawn). Returns True when the service is (or will be, once the plugin is up)
        handled, False when this mechanism cannot announce services (DNS, static)."""
        return False


class BaseInterfacePlugin(BasePlugin):
    """Serves an outside system (e.g. kubelet over CRI) using other plugins."""

    kind: ClassVar[str] = "interface"


class OriginStream:
    """Bytes of one blob from its origin, starting at the requested offset."""

    def __init__(self, chunks: AsyncIterator[bytes], size: int | None = None,
                 media_type: str | None = None, close: Any = None, restricted: bool = False) -> None:
        self.chunks = chunks
        self.size = size
        self.media_type = media_type
        self._close = close
        #: the origin was read with credentials: the blob is private and never served to peers
        self.restricted = restricted

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self.chunks

    async def aclose(self) -> None:
        if self._close is not None:
            res = self._close()
            if hasattr(res, "__await__"):
                await res
        aclose = getattr(self.chunks, "aclose", None)
        if aclose is not None:
            await aclose()


PLUGIN_BASES = (BasePackagePlugin, BaseDiscoveryPlugin, BaseInterfacePlugin)
