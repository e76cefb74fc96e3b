"""`beiran dns ...` commands (light imports only: `beiran --help` loads this module)."""

from __future__ import annotations

import time
import urllib.parse
from typing import Any

import click

from beiran.cli.errors import CLIError, DaemonError
from beiran.cli.main import client
from beiran.cli.output import emit_json, human_age, json_option, table

NAME_COLUMNS = [("name", "NAME"), ("type", "TYPE"), ("state", "STATE"), ("targets", "TARGETS"),
                ("ttl", "TTL"), ("detail", "DETAIL")]
TARGET_COLUMNS = [("url", "TARGET"), ("state", "STATE"), ("uuid", "NODE"), ("names", "FROM"), ("age", "SINCE")]


@click.group(name="dns", short_help="DNS discovery: peers from SRV and A/AAAA records.")
def cli() -> None:
    """DNS discovery: peers from SRV and A/AAAA records ([plugins.dns] names)."""


def _get(path: str) -> Any:
    try:
        return client().get(path)
    except DaemonError as exc:
        if exc.status == 404 and exc.code == "not_found":  # no /dns/ route: the plugin is not loaded
            raise CLIError("the dns plugin is not running on this daemon (see `beiran plugins`)") from None
        raise


@cli.command("status", short_help="Configured names, their answers and targets.")
@json_option
def status(as_json: bool) -> None:
    """The configured names, their last answers, and what became of each target.

    Target STATE is peer (probed, handed to the peer manager), self, unreachable or probing."""
    data = _get("/dns/status")
    if as_json:
        emit_json(data)
        return
    servers = data["nameservers"]
    click.echo(f"nameservers  {servers if isinstance(servers, str) else ', '.join(servers)}")
    nxt = data.get("next_refresh")
    click.echo(f"interval     {data['interval']:g}s" + (f", next lookup in {max(0, nxt - time.time()):.0f}s"
                                                           if nxt else ""))
    click.echo("")
    table(data["names"], NAME_COLUMNS, empty="(no names configured: set [plugins.dns] names)")
    click.echo("")
    now = time.time()
    rows = [{**t, "age": human_age(t["since"], now)} for t in data["targets"]]
    table(rows, TARGET_COLUMNS, empty="(no targets)")


@cli.command("lookup", short_help="Look NAME up now (SRV for _service._tcp. names).")
@click.argument("name")
@json_option
def lookup(name: str, as_json: bool) -> None:
    """Look NAME up now with the daemon's nameservers (SRV if it starts with _service._tcp.)."""
    data = _get("/dns/lookup?name=" + urllib.parse.quote(name, safe=""))
    if as_json:
        emit_json(data)
        return
    click.echo(f"{data['name']} ({data['type']}, ttl {data['ttl'] if data['ttl'] is not None else '-'}):")
    for url in data["targets"] or ["(no records)"]:
        click.echo(f"  {url}")


@cli.command("refresh")
def refresh() -> None:
    """Look the configured names up now instead of at the next interval."""
    try:
        client().post("/dns/refresh")
    except CLIError as exc:
        if "HTTP 404" in str(exc.message):
            raise CLIError("the dns plugin is not running on this daemon (see `beiran plugins`)") from None
        raise
    click.echo("refresh requested")
