"""Kubernetes: a CRI image service for kubelet."""

__version__ = "0.1.0"
