"""`beiran dns ...` commands."""

import click


@click.group(name="dns", short_help="DNS discovery commands.")
def cli() -> None:
    """DNS discovery: peers from SRV and A/AAAA records."""
