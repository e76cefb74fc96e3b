"""The CLI side of every plugin's `preheat` command: a live line per node, then a table and a summary;
exit 1 naming each node that failed."""

from __future__ import annotations

import sys
from typing import Any

import click

from beiran.cli.errors import CLIError
from beiran.cli.main import client
from beiran.cli.output import emit_json, human_size, table


def _where(sources: dict[str, int] | None) -> str:
    return ", ".join(f"{k} {human_size(v)}" for k, v in sorted((sources or {}).items()) if v)


class NodeLines:
    """One redrawn line per node on a terminal; a line per node as it finishes otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.tty = enabled, enabled and sys.stderr.isatty()
        self.drawn = 0
        self.finished: set[str] = set()

    def update(self, rows: list[dict[str, Any]]) -> None:
        if not self.enabled:
            return
        if not self.tty:
            for r in rows:
                if r["state"] != "downloading" and r["node"] not in self.finished:
                    self.finished.add(r["node"])
                    click.echo(self._line(r), err=True)
            return
        if self.drawn:
            sys.stderr.write(f"\x1b[{self.drawn}F")
        for r in rows:
            sys.stderr.write("\x1b[2K" + self._line(r) + "\n")
        sys.stderr.flush()
        self.drawn = len(rows)

    @staticmethod
    def _line(r: dict[str, Any], width: int = 24) -> str:
        frac = min(1.0, r["bytes"] / r["total"]) if r["total"] else (1.0 if r["state"] == "complete" else 0.0)
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        tail = f"error: {r['error']}" if r.get("error") else r["state"]
        return (f"{r['node'][:8]} [{bar}] {r['done']}/{r['blobs']} blobs {human_size(r['bytes']):>10} / "
                f"{human_size(r['total']):<10} {tail}").rstrip()


def run_preheat(path: str, body: dict[str, Any], what: str, no_progress: bool, as_json: bool) -> None:
    """POST the plugin's preheat command and render its NDJSON progress and summary."""
    lines = NodeLines(not no_progress and not as_json)
    final: dict[str, Any] = {}
    for event in client(timeout=3600).stream_lines("POST", path, body):
        final = event
        if event.get("event") == "progress":
            lines.update(event.get("nodes") or [])
    if as_json:
        emit_json(final)
        if final.get("error") or final.get("failed"):
            sys.exit(1)
        return
    if final.get("error"):
        raise CLIError(final["error"].get("message", "preheat failed"))
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
    return "all" if nodes.strip() == "all" else [n.strip() for n in nodes.split(",") if n.strip()]


nodes_option = click.option("--nodes", default="all", show_default=True, metavar="all|UUID,...",
                            help="Nodes that fetch now: all online nodes, or UUIDs (8+ characters each).")
