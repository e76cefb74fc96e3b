"""apt: a proxy whose .debs come from the cluster."""

__version__ = "0.1.0"
