"""Zeroconf discovery: peers found over mDNS."""

__version__ = "0.1.0"
