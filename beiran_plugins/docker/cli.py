"""`beiran docker ...` commands."""

import click


@click.group(name="docker", short_help="Docker/OCI images commands.")
def cli() -> None:
    """Docker/OCI images: a registry mirror served from the cluster."""
