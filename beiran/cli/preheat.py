"""The CLI side of every plugin's `preheat` command: a live line per node, then a table and a summary;
exit 1 naming each node that failed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from beiran.cli.errors import CLIError
from beiran.cli.main import client
from beiran.cli.output import emit_json, fail_with_json, human_size, table


def _where(sources: dict[str, int] | None) -> str:
    return ", ".join(f"{k} {human_size(v)}" for k, v in sorted((sources or {}).items()) if v)


def run_preheat(path: str, body: dict[str, Any], what: str, no_progress: bool, as_json: bool,
                report: Callable[[dict[str, Any]], None] | None = None) -> None:
    """POST the plugin's preheat command and render its NDJSON progress and summary; `report`
    prints the plugin's own part of the summary (table form) before the per-node table."""
    from beiran.cli.progress import Progress

    final: dict[str, Any] = {}
    with Progress(not no_progress and not as_json) as progress:
        for event in client(timeout=3600).stream_lines("POST", path, body):
            final = event
            for r in event.get("nodes") or [] if event.get("event") == "progress" else []:
                key = r["node"]
                progress.add(key, f"node {key[:8]}", r["total"] or None)
                progress.update(key, completed=r["bytes"], total=r["total"] or None)
                if r["state"] not in ("downloading", "waiting"):
                    progress.finish(key, f"{r['done']}/{r['blobs']} blobs " +
                                    (f"error: {r['error']}" if r.get("error") else r["state"]), size=r["total"])
    if as_json:
        if final.get("error") or final.get("failed"):
            failed = [f"{r['node'][:8]} ({r.get('error')})" for r in final.get("nodes") or []
                      if r.get("state") != "complete"]
            fail_with_json(final, (final.get("error") or {}).get("message") or (
                f"preheat failed on {len(failed)} node(s): " + ", ".join(failed)))
        emit_json(final)
        return
    if final.get("error"):
        raise CLIError(final["error"].get("message", "preheat failed"))
    if report is not None:
        report(final)
    nodes = final.get("nodes") or []
    table([{**r, "node": r["node"][:8], "blobs": f"{r['done']}/{r['blobs']}", "size": human_size(r["total"]),
            "from": _where(r.get("sources"))} for r in nodes],
          [("node", "NODE"), ("state", "STATE"), ("blobs", "BLOBS"), ("size", "SIZE"), ("from", "FROM"),
           ("error", "ERROR")])
    src = final.get("sources") or {}
    click.echo(f"Preheated {what} on {len(nodes) - len(final['failed'])} of {len(nodes)} nodes in "
               f"{final.get('elapsed')}s (peers {human_size(src.get('peer', 0))}, origin "
               f"{human_size(src.get('origin', 0))}, already local {human_size(src.get('local', 0))})")
    if final["failed"]:
        bad = [f"{r['node'][:8]} ({r['error']})" for r in nodes if r["state"] != "complete"]
        raise CLIError(f"preheat failed on {len(bad)} node(s): " + ", ".join(bad))


def parse_nodes(nodes: str) -> Any:
    """`all`, or node UUIDs / their first 8+ characters, comma-separated."""
    import re

    if nodes.strip() == "all":
        return "all"
    given = [n.strip() for n in nodes.split(",") if n.strip()]
    if not given:
        raise CLIError("--nodes: name `all` or node UUIDs, comma-separated (see `beiran node list`)")
    for n in given:
        if not re.fullmatch(r"[0-9a-fA-F]{8}[0-9a-fA-F-]{0,28}", n):
            raise CLIError(f"--nodes: {n!r} is not a node UUID or its first 8+ characters (see `beiran node list`)")
    return given


nodes_option = click.option("--nodes", default="all", show_default=True, metavar="all|UUID,...",
                            help="Nodes that fetch now: all online nodes, or UUIDs (8+ characters each).")
