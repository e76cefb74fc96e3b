"""The plugin loader, in process: dependencies declared in a plugin wheel's metadata are checked
before the plugin is imported, and the plugin class is the one plugin.py names as `PLUGIN`."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import pytest

from beiran.config import load_config
from beiran.plugin_loader import PluginManager, plugin_names, required_plugins

pytestmark = pytest.mark.each_plugin  # discovery sees the installed plugins

#: a plugin.py that must never run: the loader refuses its plugin before importing it
NEVER_IMPORTED = "raise RuntimeError('imported although a dependency is missing')\n"
FINE = "from beiran.plugin import BaseInterfacePlugin\n\nclass Fine(BaseInterfacePlugin):\n    pass\n\nPLUGIN = Fine\n"


def _install(site: Path, name: str, body: str, requires: tuple[str, ...] = ()) -> None:
    """A plugin as its wheel installs it: beiran_plugins/<name>/ and a dist-info whose metadata
    carries the wheel's requirements (what `[project] dependencies` becomes)."""
    pkg = site / "beiran_plugins" / name
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text('__version__ = "9.9"\n')
    (pkg / "plugin.py").write_text(body)
    info = site / f"beiran_{name}-9.9.dist-info"
    info.mkdir()
    lines = ["Metadata-Version: 2.1", f"Name: beiran-{name}", "Version: 9.9", "Requires-Dist: beiran>=0.1",
             *(f"Requires-Dist: {r}" for r in requires)]
    (info / "METADATA").write_text("\n".join(lines) + "\n")
    (info / "RECORD").write_text(f"beiran_plugins/{name}/__init__.py,,\nbeiran_plugins/{name}/plugin.py,,\n"
                                 f"{info.name}/METADATA,,\n{info.name}/RECORD,,\n")


def _load(monkeypatch, site: Path, plugins_config: dict) -> PluginManager:
    monkeypatch.syspath_prepend(str(site))
    # the session's installed plugins (tests(docker) ...) stay out: they need a whole daemon
    others = {n: {"enabled": False} for n in plugin_names() if not n.startswith("tl")}
    config = load_config(environ={}, overrides={"plugins": {**others, **plugins_config}})
    manager = PluginManager(SimpleNamespace(config=config))  # the loader reads only ctx.config here
    manager.import_all()
    asyncio.run(manager.init_all())
    asyncio.run(manager.start_all())
    return manager


def test_a_plugin_whose_dependency_is_missing_or_disabled_is_refused_unimported(tmp_path, monkeypatch):
    site = tmp_path / "site"
    _install(site, "tlneedsghost", NEVER_IMPORTED, ("beiran-tlghost>=0.1",))
    _install(site, "tloff", FINE)
    _install(site, "tlneedsoff", NEVER_IMPORTED, ("beiran-tloff",))
    _install(site, "tlbroken", "import this_module_does_not_exist_anywhere\n")
    _install(site, "tlneedsbroken", NEVER_IMPORTED, ("beiran_tlbroken",))
    _install(site, "tlbase", FINE)
    _install(site, "tlneedsbase", FINE, ("beiran-tlbase>=1", 'beiran-tlghost; extra == "dev"'))
    _install(site, "tlnoclass", "from beiran.plugin import BaseInterfacePlugin\n\n"
                                "class Nameless(BaseInterfacePlugin):\n    pass\n")
    manager = _load(monkeypatch, site, {"tloff": {"enabled": False}})
    status = {p["name"]: p for p in manager.to_list()}

    ghost = status["tlneedsghost"]
    assert ghost["status"] == "error"
    assert ghost["error"].startswith("needs plugin 'tlghost', which is not installed"), ghost
    assert ghost["requires"] == ["tlghost"]
    assert "disabled in config" in status["tlneedsoff"]["error"]
    assert status["tlneedsoff"]["error"].startswith("needs plugin 'tloff'")
    assert status["tloff"]["status"] == "disabled"
    assert status["tlneedsbroken"]["error"].startswith("needs plugin 'tlbroken', which failed: import failed")
    # refused before import: their plugin.py (which raises on import) never ran
    assert not any("imported although" in (p["error"] or "") for p in status.values())
    assert manager.get("tlneedsghost") is None and manager.get("tlneedsoff") is None

    # met dependencies load first and both plugins run; an extra's requirement is not a dependency
    assert status["tlneedsbase"]["status"] == "ready" and status["tlneedsbase"]["requires"] == ["tlbase"]
    assert status["tlbase"]["status"] == "ready"
    order = list(manager.records)
    assert order.index("tlbase") < order.index("tlneedsbase")

    assert status["tlnoclass"]["status"] == "error"
    assert "names no plugin class: add `PLUGIN = <your plugin class>`" in status["tlnoclass"]["error"]


def test_requirement_names_map_to_plugins():
    assert required_plugins(["beiran>=0.1.0", "grpcio>=1", "beiran-docker>=0.1.0",
                             "Beiran_Zero.Conf ; python_version>'3'", 'beiran-apt; extra == "dev"']
                            ) == ("docker", "zero_conf")
    assert required_plugins(None) == ()


def test_a_plugin_with_a_bad_setting_says_which_without_the_exception_type(tmp_path, monkeypatch):
    """`beiran plugins` showed "init failed: ConfigError: [plugins.x]: ..." (the type of a typed error
    is noise); an untyped exception, a bug, keeps its type."""
    site = tmp_path / "site"
    strict = ("from beiran.errors import ConfigError\nfrom beiran.plugin import BaseInterfacePlugin\n\n"
              "class Strict(BaseInterfacePlugin):\n"
              "    async def init(self, config):\n"
              "        raise ConfigError(f'[plugins.tlstrict]: unknown setting(s) {\", \".join(sorted(config))}')\n\n"
              "PLUGIN = Strict\n")
    buggy = ("from beiran.plugin import BaseInterfacePlugin\n\nclass Buggy(BaseInterfacePlugin):\n"
             "    async def init(self, config):\n        {}['x']\n\nPLUGIN = Buggy\n")
    _install(site, "tlstrict", strict)
    _install(site, "tlbuggy", buggy)
    manager = _load(monkeypatch, site, {"tlstrict": {"lisen": 1}})
    status = {p["name"]: p for p in manager.to_list()}
    assert status["tlstrict"]["error"] == "init failed: [plugins.tlstrict]: unknown setting(s) lisen"
    assert status["tlbuggy"]["error"] == "init failed: KeyError: 'x'"
