"""Tables for people, JSON for scripts."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import click


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def human_size(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def human_age(ts: Any, now: float | None = None) -> str:
    """A past epoch time as "12s ago", "5m ago", "3h ago", "2d ago"; "-" when unknown."""
    if not isinstance(ts, (int, float)) or isinstance(ts, bool):
        return "-"
    import time

    return human_duration(max(0.0, (now if now is not None else time.time()) - ts)) + " ago"


def human_duration(seconds: Any) -> str:
    """Seconds as "0.4s", "12s", "5m 3s", "3h 12m", "2d 4h"."""
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
        return "-"
    s = float(seconds)
    if s < 10:
        return f"{s:.1f}s"
    if s < 60:
        return f"{s:.0f}s"
    m, sec = divmod(int(s), 60)
    if m < 60:
        return f"{m}m {sec}s"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h}h {m}m"
    d, h = divmod(h, 24)
    return f"{d}d {h}h"


def cell(v: Any) -> str:
    """A value as a table shows it: booleans yes/no, lists joined with commas, None empty."""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (list, tuple, set)):
        return ",".join(cell(x) for x in v)
    return "" if v is None else str(v)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]], empty: str = "(none)") -> None:
    """`columns` is [(key, HEADER)]; values shown as `cell` renders them."""
    if not rows:
        click.echo(empty)
        return
    cells = [[cell(r.get(k)) for k, _ in columns] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (_, h) in enumerate(columns)]
    click.echo("  ".join(h.ljust(w) for (_, h), w in zip(columns, widths, strict=True)).rstrip())
    for c in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)).rstrip())


def fail_with_json(data: Any, message: str) -> None:
    """A --json command that failed after it had a result to show: that JSON on stdout for a
    script, one line on stderr for a person, exit status 1."""
    import sys

    emit_json(data)
    click.echo(f"Error: {' '.join(message.split())}", err=True)
    sys.exit(1)


#: set when the command being run was given --json: its errors are then JSON on stdout too
json_requested = False


def _note_json(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    global json_requested
    json_requested = json_requested or bool(value)
    return value


json_option = click.option("--json", "as_json", is_flag=True, callback=_note_json,
                           help="Print JSON (errors too, as {\"error\": CODE, \"message\": ...}).")
