"""The npm plugin class (skeleton: its own issue fills it in)."""

from __future__ import annotations

from beiran.plugin import BasePackagePlugin
from beiran_plugins.npm import __version__


class NPMPlugin(BasePackagePlugin):
    """npm: a registry proxy whose tarballs come from the cluster."""

    name = "npm"
    version = __version__
