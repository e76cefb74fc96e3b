"""DNS discovery: peers from SRV and A/AAAA records."""

__version__ = "0.1.0"
