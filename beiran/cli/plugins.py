"""`beiran plugins` and `beiran config`."""

from __future__ import annotations

from typing import Any

import click

from beiran.cli.errors import CLIError, DaemonNotRunning
from beiran.cli.main import client
from beiran.cli.output import emit_json, json_option, table


def installed_plugins() -> list[dict[str, Any]]:
    """Installed plugins without a daemon: names and distributions (imports no plugin code)."""
    from beiran.plugin_loader import plugin_distributions, plugin_names

    dists = plugin_distributions()
    return [{"name": n, "kind": "", "distribution": dists.get(n, (None, ""))[0],
             "version": dists.get(n, (None, ""))[1], "enabled": None, "status": "daemon not running",
             "error": None} for n in plugin_names()]


@click.command(short_help="Installed plugins and their status.")
@json_option
def plugins(as_json: bool) -> None:
    """Installed plugins: kind, distribution, version, status (from the daemon when it runs)."""
    try:
        rows = client(timeout=10).get("/status")["plugins"]
    except DaemonNotRunning:
        rows = installed_plugins()
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        if r.get("error") or r.get("degraded"):
            r["status"] = f"{r['status']}: {r.get('error') or r['degraded']}"
    table(rows, [("name", "NAME"), ("kind", "KIND"), ("distribution", "DISTRIBUTION"),
                 ("version", "VERSION"), ("enabled", "ENABLED"), ("status", "STATUS")],
          empty="(no plugins installed)")


@click.command(short_help="The config, as TOML a daemon can start from.")
@click.option("--local", is_flag=True, help="Show the config a daemon started here would use (no daemon needed).")
@click.option("--config", "config_file", metavar="FILE", help="With --local: this config file instead of "
              "$BEIRAN_CONFIG or /etc/beiran/config.toml (check a file before a daemon starts from it).")
@json_option
def config(local: bool, config_file: str | None, as_json: bool) -> None:
    """The running daemon's config as TOML a daemon can start from (secrets left out; --json: raw).

    \b
    e.g. beiran config --local --config /etc/beiran/config.toml
         beiran config > f.toml && beiran daemon --config f.toml
    """
    if config_file and not local:
        raise CLIError("--config FILE reads a file, not the running daemon: add --local")
    if local:
        from beiran.config import load_config
        from beiran.errors import BeiranError
        from beiran.plugin_check import check_plugin_sections

        try:
            loaded = load_config(config_file)
        except BeiranError as exc:
            raise CLIError(exc.message) from None
        errors, notes = check_plugin_sections(loaded)
        for note in notes:
            click.echo(f"note: {note}", err=True)
        if errors:
            raise CLIError("; ".join(errors))
        data = loaded.to_public_dict()
    else:
        data = client().get("/config")
    if as_json:
        emit_json(data)
        return
    from beiran.config_toml import config_toml

    click.echo(config_toml(data), nl=False)
