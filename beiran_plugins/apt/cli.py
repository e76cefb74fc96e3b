"""`beiran apt ...` commands."""

import click


@click.group(name="apt", short_help="apt commands.")
def cli() -> None:
    """apt: a proxy whose .debs come from the cluster."""
