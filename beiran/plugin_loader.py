"""Find, import and run plugins. Listing imports nothing; a plugin is imported only when enabled,
and one that fails to import, init or start is recorded with its error while the others go on."""

from __future__ import annotations

import importlib
import inspect
import logging
import pkgutil
import traceback
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

from beiran.plugin import PLUGIN_BASES, BasePlugin, PluginStatus

if TYPE_CHECKING:
    from tornado.web import RequestHandler

    from beiran.context import DaemonContext
    from beiran.models.base import BaseModel

    Route = tuple[str, type[RequestHandler], dict[str, Any]]

log = logging.getLogger(__name__)
NAMESPACE = "beiran_plugins"


def plugin_names() -> list[str]:
    """Names of installed plugins, by `pkgutil.iter_modules` over the namespace package."""
    try:
        ns = importlib.import_module(NAMESPACE)
    except ImportError:
        return []
    return sorted(m.name for m in pkgutil.iter_modules(ns.__path__) if m.ispkg)


def plugin_distributions() -> dict[str, tuple[str, str]]:
    """plugin name -> (distribution, version) of the wheel that installed `beiran_plugins/<name>/`."""
    import importlib_metadata

    found: dict[str, tuple[str, str]] = {}
    for dist_name in set(importlib_metadata.packages_distributions().get(NAMESPACE, [])):
        try:
            dist = importlib_metadata.distribution(dist_name)
        except importlib_metadata.PackageNotFoundError:
            continue
        for f in dist.files or ():
            parts = str(f).replace("\\", "/").split("/")
            if len(parts) == 3 and parts[0] == NAMESPACE and parts[2] == "__init__.py":
                found[parts[1]] = (dist.metadata["Name"], dist.version)
    return found


def plugin_class(module: ModuleType) -> type[BasePlugin]:
    """The one plugin class defined in a plugin.py."""
    found = [obj for obj in vars(module).values()
             if inspect.isclass(obj) and issubclass(obj, PLUGIN_BASES) and obj not in PLUGIN_BASES
             and obj.__module__ == module.__name__]
    if len(found) != 1:
        raise ImportError(f"{module.__name__} must define exactly one plugin class, found {len(found)}")
    return found[0]


@dataclass
class PluginRecord:
    name: str
    enabled: bool = True
    kind: str = ""
    version: str = ""
    distribution: str | None = None
    instance: BasePlugin | None = None
    error: str | None = None
    #: (pattern, handler class, handler kwargs) of the plugin's api.py `ROUTES`
    routes: list[Route] = field(default_factory=list)
    models: list[type[BaseModel]] = field(default_factory=list)
    #: console panels from the plugin's api.py `UI_PANELS`: (title, url under /<name>/)
    panels: list[tuple[str, str]] = field(default_factory=list)

    @property
    def status(self) -> str:
        if not self.enabled:
            return PluginStatus.DISABLED.value
        if self.error:
            return PluginStatus.ERROR.value
        return self.instance.status.value if self.instance else PluginStatus.INIT.value

    def to_dict(self) -> dict[str, Any]:
        info = {"name": self.name, "kind": self.kind, "version": self.version,
                "distribution": self.distribution, "enabled": self.enabled, "status": self.status, "error": self.error}
        if self.instance and not self.error:
            try:
                info.update(self.instance.status_info())
            except Exception as exc:  # noqa: BLE001 - a status call must never break /status
                info["status_error"] = str(exc)
        return info


class PluginManager:
    """Loads plugins and is the registry other code uses to find one by name."""

    def __init__(self, ctx: DaemonContext) -> None:
        self.ctx = ctx
        self.records: dict[str, PluginRecord] = {}

    def get(self, name: str) -> BasePlugin | None:
        rec = self.records.get(name)
        if rec and rec.instance and not rec.error:
            return rec.instance
        return None

    def of_kind(self, kind: str) -> list[BasePlugin]:
        return [r.instance for r in self.records.values()
                if r.instance is not None and not r.error and r.kind == kind]

    def enabled_names(self) -> list[str]:
        return sorted(n for n, r in self.records.items() if r.enabled and not r.error)

    def _fail(self, rec: PluginRecord, stage: str, exc: BaseException) -> None:
        rec.error = f"{stage} failed: {type(exc).__name__}: {exc}"
        if rec.instance:
            rec.instance.status, rec.instance.error = PluginStatus.ERROR, rec.error
        log.error("plugin %s: %s", rec.name, rec.error)
        log.debug("%s", "".join(traceback.format_exception(exc)))

    def import_all(self) -> None:
        """Import every enabled plugin: its class, models and routes."""
        config = self.ctx.config
        installed = plugin_names()
        try:
            dists = plugin_distributions()
        except Exception as exc:  # noqa: BLE001 - metadata trouble only costs the version column
            log.warning("cannot read plugin distributions: %s", exc)
            dists = {}
        for unknown in sorted(set(config.plugins) - set(installed)):
            log.warning("config names plugin %r, which is not installed (installed: %s)",
                        unknown, ", ".join(installed) or "none")
        for name in installed:
            dist, version = dists.get(name, (None, ""))
            rec = PluginRecord(name=name, enabled=config.plugin_enabled(name), distribution=dist,
                               version=version)
            self.records[name] = rec
            if not rec.enabled:
                log.info("plugin %s: disabled in config", name)
                continue
            try:
                self._import_one(rec)
            except Exception as exc:  # noqa: BLE001 - a broken plugin must not stop the daemon
                self._fail(rec, "import", exc)

    def _import_one(self, rec: PluginRecord) -> None:
        base = f"{NAMESPACE}.{rec.name}"
        module = importlib.import_module(f"{base}.plugin")
        cls = plugin_class(module)
        if not cls.name:
            cls.name = rec.name
        if cls.name != rec.name:
            raise ImportError(f"plugin class says name {cls.name!r} but lives in {base}")
        rec.kind = cls.kind
        pkg = importlib.import_module(base)
        rec.version = rec.version or getattr(pkg, "__version__", cls.version)
        rec.instance = cls(self.ctx)
        rec.models = self._optional(base, "models", "MODELS", default_scan=True)
        routes = self._optional(base, "api", "ROUTES")
        allowed = (f"/{rec.name}/", f"/{rec.name}$", f"/{rec.name}(", *cls.extra_route_prefixes)
        for route in routes:
            pattern = route[0]
            if not pattern.startswith(allowed) and pattern != f"/{rec.name}":
                raise ImportError(f"route {pattern!r} must start with /{rec.name}/")
            handler_kwargs = dict(route[2]) if len(route) > 2 else {}
            handler_kwargs.setdefault("plugin", rec.instance)
            rec.routes.append((pattern, route[1], handler_kwargs))
        for title, url in self._optional(base, "api", "UI_PANELS"):
            if not str(url).startswith(f"/{rec.name}/"):
                raise ImportError(f"console panel {url!r} must be under /{rec.name}/")
            rec.panels.append((str(title), str(url)))

    @staticmethod
    def _optional(base: str, modname: str, attr: str, default_scan: bool = False) -> list[Any]:
        try:
            module = importlib.import_module(f"{base}.{modname}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{base}.{modname}":
                return []
            raise
        if hasattr(module, attr):
            return list(getattr(module, attr))
        if default_scan:
            from beiran.models.base import BaseModel
            return [o for o in vars(module).values() if inspect.isclass(o) and issubclass(o, BaseModel)
                    and o is not BaseModel and o.__module__ == module.__name__]
        return []

    def all_models(self) -> list[type[BaseModel]]:
        return [m for r in self.records.values() if r.instance and not r.error for m in r.models]

    def all_routes(self) -> list[Route]:
        return [route for r in self.records.values() if r.instance and not r.error for route in r.routes]

    def ui_panels(self) -> list[tuple[str, str, str]]:
        """(plugin, title, url) of every live plugin's console panels."""
        return [(r.name, title, url) for r, _ in self._live() for title, url in r.panels]

    async def init_all(self) -> None:
        for rec, plugin in self._live():
            try:
                await plugin.init(self.ctx.config.plugin_section(rec.name))
            except Exception as exc:  # noqa: BLE001
                self._fail(rec, "init", exc)

    async def start_all(self) -> None:
        for rec, plugin in self._live():
            try:
                await plugin.start()
                plugin.status = PluginStatus.READY
                log.info("plugin %s %s started", rec.name, rec.version)
            except Exception as exc:  # noqa: BLE001
                self._fail(rec, "start", exc)

    async def stop_all(self) -> None:
        for rec, plugin in reversed(self._live()):
            try:
                await plugin.stop()
                plugin.status = PluginStatus.STOPPED
            except Exception as exc:  # noqa: BLE001
                log.warning("plugin %s: stop failed: %s", rec.name, exc)

    def _live(self) -> list[tuple[PluginRecord, BasePlugin]]:
        """Loaded plugins that have not failed, in load order (a dependency before its dependents)."""
        return [(r, r.instance) for r in self.records.values() if r.instance is not None and not r.error]

    def to_list(self) -> list[dict[str, Any]]:
        return [self.records[n].to_dict() for n in sorted(self.records)]

    async def status_list(self, timeout: float = 2.0) -> list[dict[str, Any]]:
        """`to_list` with each ready plugin's health asked now: a plugin whose outside dependency
        (a container runtime, a resolver) does not answer is `degraded`, with the reason."""
        import asyncio

        rows = self.to_list()

        async def health(row: dict[str, Any]) -> None:
            rec = self.records[row["name"]]
            if rec.instance is None or row["status"] != PluginStatus.READY.value:
                return
            try:
                reason = await asyncio.wait_for(rec.instance.health(), timeout)
            except TimeoutError:
                reason = f"its health check did not answer in {timeout:g}s"
            except Exception as exc:  # noqa: BLE001 - a health check must never break /status
                reason = f"health check failed: {type(exc).__name__}: {exc}"
            if reason:
                row["status"], row["degraded"] = PluginStatus.DEGRADED.value, reason

        await asyncio.gather(*(health(r) for r in rows))
        return rows
