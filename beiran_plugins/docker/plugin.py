"""The docker plugin class (skeleton: its own issue fills it in)."""

from __future__ import annotations

from beiran.plugin import BasePackagePlugin
from beiran_plugins.docker import __version__


class DockerPlugin(BasePackagePlugin):
    """Docker/OCI images: a registry mirror served from the cluster."""

    name = "docker"
    version = __version__
