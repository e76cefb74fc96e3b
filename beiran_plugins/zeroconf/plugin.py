"""The zeroconf plugin class (skeleton: its own issue fills it in)."""

from __future__ import annotations

from beiran.plugin import BaseDiscoveryPlugin
from beiran_plugins.zeroconf import __version__


class ZeroconfPlugin(BaseDiscoveryPlugin):
    """Zeroconf discovery: peers found over mDNS."""

    name = "zeroconf"
    version = __version__
