"""Find, import and run plugins. Listing imports nothing; a plugin is imported only when enabled,
and one that fails to import, init or start is recorded with its error while the others go on.

A plugin's wheel names the plugins it needs as ordinary requirements (`beiran-docker` in the k8s
wheel's `dependencies`). They are read from the installed metadata before anything is imported: a
plugin whose dependency is not installed, disabled or failed is marked error and never imported,
and dependencies load (and start) before the plugins that need them."""

from __future__ import annotations

import importlib
import inspect
import logging
import pkgutil
import re
import traceback
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

from beiran.errors import BeiranError
from beiran.plugin import PLUGIN_BASES, BaseDiscoveryPlugin, BasePlugin, PluginStatus

if TYPE_CHECKING:
    from tornado.web import RequestHandler

    from beiran.context import DaemonContext
    from beiran.models.base import BaseModel

    Route = tuple[str, type[RequestHandler], dict[str, Any]]

log = logging.getLogger(__name__)
NAMESPACE = "beiran_plugins"
_P = TypeVar("_P", bound=BasePlugin)


def plugin_names() -> list[str]:
    """Names of installed plugins, by `pkgutil.iter_modules` over the namespace package."""
    try:
        ns = importlib.import_module(NAMESPACE)
    except ImportError:
        return []
    return sorted(m.name for m in pkgutil.iter_modules(ns.__path__) if m.ispkg)


@dataclass(frozen=True)
class PluginDist:
    """The installed wheel that holds `beiran_plugins/<name>/`."""

    distribution: str
    version: str
    #: other plugins this one needs: its wheel's `beiran-<plugin>` requirements
    requires: tuple[str, ...] = ()


_REQUIREMENT_NAME = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def required_plugins(requirements: list[str] | None) -> tuple[str, ...]:
    """The plugins named by a wheel's `Requires-Dist` lines (`beiran-docker>=0.1` -> `docker`);
    the core (`beiran`) and optional extras (`; extra == "dev"`) are not plugin dependencies."""
    found: list[str] = []
    for req in requirements or ():
        marker = req.partition(";")[2]
        match = _REQUIREMENT_NAME.match(req)
        if match is None or "extra" in marker:
            continue
        name = re.sub(r"[-_.]+", "-", match.group(1)).lower()
        if name.startswith("beiran-"):
            found.append(name.removeprefix("beiran-").replace("-", "_"))
    return tuple(found)


def installed_plugin_dists() -> dict[str, PluginDist]:
    """plugin name -> the wheel that installed `beiran_plugins/<name>/`, by the installed metadata."""
    import importlib_metadata

    found: dict[str, PluginDist] = {}
    for dist_name in set(importlib_metadata.packages_distributions().get(NAMESPACE, [])):
        try:
            dist = importlib_metadata.distribution(dist_name)
        except importlib_metadata.PackageNotFoundError:
            continue
        for f in dist.files or ():
            parts = str(f).replace("\\", "/").split("/")
            if len(parts) == 3 and parts[0] == NAMESPACE and parts[2] == "__init__.py":
                found[parts[1]] = PluginDist(dist.metadata["Name"], dist.version, required_plugins(dist.requires))
    return found


def plugin_distributions() -> dict[str, tuple[str, str]]:
    """plugin name -> (distribution, version) of the wheel that installed `beiran_plugins/<name>/`."""
    return {name: (d.distribution, d.version) for name, d in installed_plugin_dists().items()}


def plugin_class(module: ModuleType) -> type[BasePlugin]:
    """The class a plugin.py names as `PLUGIN = <class>`."""
    cls = getattr(module, "PLUGIN", None)
    if cls is None:
        raise ImportError(f"{module.__name__} names no plugin class: add `PLUGIN = <your plugin class>`")
    if not (inspect.isclass(cls) and issubclass(cls, PLUGIN_BASES) and cls not in PLUGIN_BASES):
        raise ImportError(f"{module.__name__}.PLUGIN must be a class derived from one of "
                          f"{', '.join(b.__name__ for b in PLUGIN_BASES)}, not {cls!r}")
    return cls


def load_plugin_class(name: str) -> type[BasePlugin]:
    """Import `beiran_plugins.<name>.plugin` and return its class, named `name` (the folder's)."""
    base = f"{NAMESPACE}.{name}"
    cls = plugin_class(importlib.import_module(f"{base}.plugin"))
    if not cls.name:
        cls.name = name
    if cls.name != name:
        raise ImportError(f"plugin class says name {cls.name!r} but lives in {base}")
    return cls


@dataclass
class PluginRecord:
    name: str
    enabled: bool = True
    kind: str = ""
    version: str = ""
    distribution: str | None = None
    #: plugins this one needs (from its wheel's metadata), loaded before it
    requires: tuple[str, ...] = ()
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
                "distribution": self.distribution, "requires": list(self.requires), "enabled": self.enabled,
                "status": self.status, "error": self.error}
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

    def get_as(self, name: str, cls: type[_P]) -> _P | None:
        """The running plugin `name` as its own class (for a plugin that declared it needs that
        one, e.g. k8s -> docker), or None when it is not running."""
        plugin = self.get(name)
        return plugin if isinstance(plugin, cls) else None

    def of_kind(self, kind: str) -> list[BasePlugin]:
        return [r.instance for r in self.records.values()
                if r.instance is not None and not r.error and r.kind == kind]

    def discovery_plugins(self) -> list[BaseDiscoveryPlugin]:
        return [p for p in self.of_kind("discovery") if isinstance(p, BaseDiscoveryPlugin)]

    def enabled_names(self) -> list[str]:
        return sorted(n for n, r in self.records.items() if r.enabled and not r.error)

    def fail(self, rec: PluginRecord, stage: str, exc: BaseException) -> None:
        """Mark a plugin error: what failed at which stage (the daemon carries on without it)."""
        # a typed error (a bad setting: "[plugins.apt]: unknown setting(s) lisen") says it all; anything
        # else is a bug, named by its type
        why = exc.message if isinstance(exc, BeiranError) else f"{type(exc).__name__}: {exc}"
        self._mark_error(rec, f"{stage} failed: {why}")
        log.debug("%s", "".join(traceback.format_exception(exc)))

    def _mark_error(self, rec: PluginRecord, error: str) -> None:
        rec.error = error
        if rec.instance:
            rec.instance.status, rec.instance.error = PluginStatus.ERROR, rec.error
        log.error("plugin %s: %s", rec.name, rec.error)

    def import_all(self) -> None:
        """Import every enabled plugin whose dependencies loaded: its class, models and routes.
        Records are kept in load order, dependencies first."""
        config = self.ctx.config
        installed = plugin_names()
        try:
            dists = installed_plugin_dists()
        except Exception as exc:  # noqa: BLE001 - metadata trouble costs the version column and dependency order
            log.warning("cannot read plugin distributions: %s", exc)
            dists = {}
        for unknown in sorted(set(config.plugins) - set(installed)):
            log.warning("config names plugin %r, which is not installed (installed: %s)",
                        unknown, ", ".join(installed) or "none")
        pending: dict[str, PluginRecord] = {}
        for name in installed:
            dist = dists.get(name)
            pending[name] = PluginRecord(name=name, enabled=config.plugin_enabled(name),
                                         distribution=dist.distribution if dist else None,
                                         version=dist.version if dist else "",
                                         requires=tuple(r for r in dist.requires if r != name) if dist else ())
        for name in installed:
            self._load(pending[name], pending, chain=())

    def _load(self, rec: PluginRecord, pending: dict[str, PluginRecord], chain: tuple[str, ...]) -> None:
        """Load `rec` after the plugins it requires (each plugin once)."""
        if rec.name in self.records:
            return
        if rec.name in chain:
            self.records[rec.name] = rec
            self._mark_error(rec, f"plugin dependency cycle: {' -> '.join((*chain, rec.name))}")
            return
        if not rec.enabled:
            self.records[rec.name] = rec
            log.info("plugin %s: disabled in config", rec.name)
            return
        for dep in rec.requires:
            if dep in pending:
                self._load(pending[dep], pending, (*chain, rec.name))
        self.records[rec.name] = rec
        if rec.error:  # a cycle through it was found while loading its dependencies
            return
        missing = self._unmet(rec, pending)
        if missing:
            self._mark_error(rec, missing)
            return
        try:
            self._import_one(rec)
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not stop the daemon
            self.fail(rec, "import", exc)

    def _unmet(self, rec: PluginRecord, pending: dict[str, PluginRecord]) -> str:
        """Why the plugins `rec` requires cannot serve it, or "" when they all loaded."""
        for dep in rec.requires:
            have = pending.get(dep)
            if have is None:
                return (f"needs plugin {dep!r}, which is not installed (install the beiran-{dep} wheel, "
                        f"or disable {rec.name} with [plugins.{rec.name}] enabled = false)")
            if not have.enabled:
                return (f"needs plugin {dep!r}, which is disabled in config "
                        f"(enable [plugins.{dep}], or disable {rec.name} too)")
            if have.error:
                return f"needs plugin {dep!r}, which failed: {have.error}"
        return ""

    def _import_one(self, rec: PluginRecord) -> None:
        base = f"{NAMESPACE}.{rec.name}"
        cls = load_plugin_class(rec.name)
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
            if missing := self._unmet(rec, self.records):  # a dependency failed its own init
                self._mark_error(rec, missing)
                continue
            try:
                section = self.ctx.config.plugin_section(rec.name)
                type(plugin).check_config(section)
                await plugin.init(section)
            except Exception as exc:  # noqa: BLE001
                self.fail(rec, "init", exc)

    async def start_all(self) -> None:
        for rec, plugin in self._live():
            if missing := self._unmet(rec, self.records):
                self._mark_error(rec, missing)
                continue
            try:
                await plugin.start()
                plugin.status = PluginStatus.READY
                log.info("plugin %s %s started", rec.name, rec.version)
            except Exception as exc:  # noqa: BLE001
                self.fail(rec, "start", exc)

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
