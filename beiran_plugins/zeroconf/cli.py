"""`beiran zeroconf ...` commands (light imports only: `beiran --help` loads this module)."""

from __future__ import annotations

import time
from typing import Any

import click

from beiran.cli.errors import CLIError
from beiran.cli.main import client
from beiran.cli.output import emit_json, human_age, json_option, table

SERVICE_COLUMNS = [("instance", "INSTANCE"), ("addresses", "ADDRESSES"), ("port", "PORT"),
                   ("state", "STATE"), ("detail", "DETAIL"), ("age", "SINCE")]


@click.group(name="zeroconf", short_help="Zeroconf discovery: peers found over mDNS.")
def cli() -> None:
    """Zeroconf discovery: peers found over mDNS (`_beiran._tcp.local.`)."""


def fetch_status() -> dict[str, Any]:
    try:
        return client().get("/zeroconf/status")
    except CLIError as exc:
        if "HTTP 404" in str(exc.message):
            raise CLIError("the zeroconf plugin is not running on this daemon "
                           "(see `beiran plugins`)") from None
        raise


@cli.command("status")
@json_option
def status(as_json: bool) -> None:
    """What this node announces and the services it has heard.

    STATE is peer (probed and connected), self, malformed, wrong-node (its /info answers with
    another UUID), unreachable, unresolved, other-cluster or resolving."""
    data = fetch_status()
    if as_json:
        emit_json(data)
        return
    net = data.get("network") or {}
    click.echo(f"instance  {data['instance']}  (cluster {data['cluster']})")
    click.echo(f"mDNS on   {', '.join(net.get('interfaces') or []) or '-'} ({net.get('ip_version', '-')})")
    click.echo(f"announce  {', '.join(net.get('announce') or []) or '-'}")
    for ann in data.get("announced") or []:
        if ann.get("withheld"):
            state = "not announced: none of this node's addresses may carry it"
        elif ann["registered"]:
            state = f"announced on {', '.join(ann.get('addresses') or [])}"
        else:
            state = f"NOT announced: {ann.get('error') or 'pending'}"
        click.echo(f"service   {ann['type']} port {ann['port']}: {state}")
    click.echo("")
    now = time.time()
    rows = [{**s, "instance": s["name"].split(".", 1)[0][:40], "detail": (s.get("detail") or "")[:60],
             "age": human_age(s["since"], now)} for s in data.get("services") or []]
    table(rows, SERVICE_COLUMNS, empty="(no _beiran._tcp services heard yet)")
