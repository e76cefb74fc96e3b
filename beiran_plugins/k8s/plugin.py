"""The k8s plugin class (skeleton: its own issue fills it in)."""

from __future__ import annotations

from beiran.plugin import BaseInterfacePlugin
from beiran_plugins.k8s import __version__


class K8sPlugin(BaseInterfacePlugin):
    """Kubernetes: a CRI image service for kubelet."""

    name = "k8s"
    version = __version__
