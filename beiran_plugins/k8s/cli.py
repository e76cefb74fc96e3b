"""`beiran k8s ...` commands."""

import click


@click.group(name="k8s", short_help="Kubernetes commands.")
def cli() -> None:
    """Kubernetes: a CRI image service for kubelet."""
