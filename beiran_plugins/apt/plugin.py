"""The apt plugin class (skeleton: its own issue fills it in)."""

from __future__ import annotations

from beiran.plugin import BasePackagePlugin
from beiran_plugins.apt import __version__


class AptPlugin(BasePackagePlugin):
    """apt: a proxy whose .debs come from the cluster."""

    name = "apt"
    version = __version__
