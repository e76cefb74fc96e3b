"""The dns plugin class (skeleton: its own issue fills it in)."""

from __future__ import annotations

from beiran.plugin import BaseDiscoveryPlugin
from beiran_plugins.dns import __version__


class DNSPlugin(BaseDiscoveryPlugin):
    """DNS discovery: peers from SRV and A/AAAA records."""

    name = "dns"
    version = __version__
