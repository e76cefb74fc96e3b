"""`beiran daemon`."""

from __future__ import annotations

import sys

import click

from beiran.cli.errors import CLIError


@click.command()
@click.option("--config", "config_file", metavar="FILE", envvar="BEIRAN_CONFIG",
              help="TOML config file (default /etc/beiran/config.toml when present).")
@click.option("--listen", metavar="HOST:PORT", help="TCP address for peers and package clients.")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Store, database and node identity.")
@click.option("--run-dir", type=click.Path(file_okay=False), help="Where the unix socket lives.")
@click.option("--peer", "peers", multiple=True, metavar="URL", help="A static peer (repeatable).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              help="Log detail (default: info).")
@click.pass_context
def daemon(ctx: click.Context, config_file: str | None, listen: str | None, data_dir: str | None,
           run_dir: str | None, peers: tuple[str, ...], log_level: str | None) -> None:
    """Run the Beiran daemon in the foreground.

    Flags win over BEIRAN_* variables, which win over the config file. The admin socket is
    `beiran --socket PATH daemon` (default: <run_dir>/beirand.sock). `beiran config --local`
    shows the config this would start with; SIGHUP re-reads it.
    """
    from beiran.config import load_config
    from beiran.daemon.main import serve
    from beiran.errors import BeiranError

    socket_path = (ctx.find_root().obj or {}).get("socket")
    overrides = {"listen": listen, "data_dir": data_dir, "run_dir": run_dir, "socket": socket_path,
                 "log_level": log_level, "peers": list(peers) or None}
    try:
        config = load_config(config_file, overrides=overrides)
    except BeiranError as exc:
        raise CLIError(exc.message) from None
    sys.exit(serve(config, lambda: load_config(config_file, overrides=overrides)))
