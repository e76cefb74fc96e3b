"""Beiran: every package crosses the WAN once per cluster."""

__version__ = "0.1.0"
