"""Docker/OCI images: a registry mirror served from the cluster."""

__version__ = "0.1.0"
