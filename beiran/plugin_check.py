"""Each enabled plugin's `[plugins.<name>]` checked with no daemon running, the way the loader
checks it before init(): `beiran config --local` finds a typo before a restart does."""

from __future__ import annotations

from typing import TYPE_CHECKING

from beiran.errors import BeiranError
from beiran.plugin_loader import load_plugin_class, plugin_names

if TYPE_CHECKING:
    from beiran.config import Config


def check_plugin_sections(config: Config) -> tuple[list[str], list[str]]:
    """(errors, notes): an error per enabled plugin whose section it would refuse; a note per
    section that names no installed plugin (the daemon ignores those)."""
    errors: list[str] = []
    installed = plugin_names()
    for name in installed:
        if not config.plugin_enabled(name):
            continue
        try:
            load_plugin_class(name).check_config(config.plugin_section(name))
        except BeiranError as exc:
            errors.append(exc.message)
        except ImportError as exc:
            errors.append(f"plugin {name} cannot be imported: {exc}")
    notes = [f"[plugins.{name}]: no such plugin is installed here (installed: {', '.join(installed) or 'none'})"
             for name in sorted(set(config.plugins) - set(installed))]
    return errors, notes
