"""`beiran npm ...` commands."""

import click


@click.group(name="npm", short_help="npm commands.")
def cli() -> None:
    """npm: a registry proxy whose tarballs come from the cluster."""
