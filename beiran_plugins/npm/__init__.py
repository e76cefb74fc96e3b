"""npm: a registry proxy whose tarballs come from the cluster."""

__version__ = "0.1.0"
