"""`beiran zeroconf ...` commands."""

import click


@click.group(name="zeroconf", short_help="Zeroconf discovery commands.")
def cli() -> None:
    """Zeroconf discovery: peers found over mDNS."""
