"""`beiran node ...`."""

from __future__ import annotations

import time

import click

from beiran import __version__
from beiran.cli.main import client
from beiran.cli.output import cell, emit_json, human_age, json_option, table

NODE_COLUMNS = [("uuid", "UUID"), ("url", "URL"), ("hostname", "HOSTNAME"), ("status", "STATUS"),
                ("membership", "MEMBERSHIP"),
                ("found_by", "FOUND BY"), ("version", "VERSION"), ("seen", "LAST SEEN")]


@click.group()
def node() -> None:
    """Nodes of the cluster."""


@node.command("list")
@click.option("--all", "show_all", is_flag=True, help="Include offline nodes.")
@json_option
def list_nodes(show_all: bool, as_json: bool) -> None:
    """Known nodes and their status."""
    data = client().get("/nodes" + ("?all=true" if show_all else ""))
    if as_json:
        emit_json(data["nodes"])
        return
    now = time.time()
    for n in data["nodes"]:
        n["seen"] = human_age(n.get("last_seen"), now)
    table(data["nodes"], NODE_COLUMNS)
    from beiran.peer.refusals import HINTS

    reasons = sorted({str(n["refused"]) for n in data["nodes"] if n.get("refused")})
    if reasons:
        click.echo("")
    for reason in reasons:
        click.echo(f"refused: {reason}: {HINTS.get(reason, reason)}")
    cluster = data.get("cluster")
    if cluster:
        members = cluster["members"]
        click.echo(f"\ncluster mode: {cluster['mode']} ({members} member{'' if members == 1 else 's'}; full mesh "
                   f"up to {cluster['full_mesh_max']})")


def resolve_node(given: str) -> str:
    """A node's UUID from the whole UUID (dashes optional) or its first 8+ characters, as tables and
    preheat show them."""
    import re
    import uuid as uuidlib

    from beiran.cli.errors import CLIError

    try:
        return str(uuidlib.UUID(given))
    except ValueError:
        pass
    prefix = given.lower()
    if not re.fullmatch(r"[0-9a-f]{8}[0-9a-f-]{0,27}", prefix):
        raise CLIError(f"not a node UUID: {given!r} (see `beiran node list`)")
    found = [n["uuid"] for n in client().get("/nodes?all=true")["nodes"] if str(n.get("uuid", "")).startswith(prefix)]
    if len(found) > 1:
        raise CLIError(f"{given!r} is the start of {len(found)} nodes' UUIDs: give more of it")
    if not found:
        raise CLIError(f"no known node's UUID starts with {given!r} (see `beiran node list --all`)")
    return str(found[0])


@node.command("info")
@click.argument("uuid", required=False)
@json_option
def info(uuid: str | None, as_json: bool) -> None:
    """This node, or another by UUID (or its first 8+ characters)."""
    if uuid:
        uuid = resolve_node(uuid)
    data = client().get(f"/nodes/{uuid}" if uuid else "/info")
    if as_json:
        emit_json(data)
        return
    if "last_seen" in data:
        data["last_seen"] = human_age(data["last_seen"])
    for key in ("uuid", "url", "hostname", "status", "version", "os_type", "architecture",
                "addresses", "plugins", "found_by", "blobs", "last_seen"):
        if key in data:
            value = data[key]
            click.echo(f"{key:13} {', '.join(map(cell, value)) if isinstance(value, list) else cell(value)}")


@node.command("probe")
@click.argument("address")
@json_option
def probe(address: str, as_json: bool) -> None:
    """Probe ADDRESS (HOST:PORT or URL) and connect it as a peer."""
    data = client(timeout=30).request("POST", "/nodes?cmd=probe", {"address": address})
    if as_json:
        emit_json(data)
    else:
        click.echo(f"{data.get('uuid')} at {data.get('url')}: {data.get('status')}")


@node.command("version")
@json_option
def version(as_json: bool) -> None:
    """Versions of this CLI and of the running daemon."""
    from beiran.cli.errors import CLIError

    try:
        daemon = client(timeout=5).get("/info").get("version")
    except CLIError:
        daemon = None
    if as_json:
        emit_json({"cli": __version__, "daemon": daemon})
    else:
        click.echo(f"cli     {__version__}\ndaemon  {daemon or 'not running'}")
