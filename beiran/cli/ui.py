"""`beiran ui`: where the console is, or the console served on a local port through the socket."""

from __future__ import annotations

import click

from beiran.cli.errors import CLIError
from beiran.cli.main import client


def _ui_url(listen: str) -> str:
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"  # the default client_cidrs admit loopback only
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/ui/"


@click.command("ui", short_help="The read-only web console's URL (or serve it).")
@click.option("--serve", "serve_port", type=click.IntRange(0, 65535), default=None, metavar="PORT",
              help="Serve the console on 127.0.0.1:PORT through the unix socket (0: any free port), "
                   "for a node whose TCP listener the browser cannot reach.")
def ui(serve_port: int | None) -> None:
    """Print the console's URL (read-only; open it in a browser on an allowed client address)."""
    daemon = client()
    config = daemon.get("/config")
    if serve_port is None:
        click.echo(_ui_url(str(config.get("listen", ""))))
        return
    from beiran.cli.ui_proxy import serve

    try:
        serve(daemon, serve_port)
    except OSError as exc:
        raise CLIError(f"cannot listen on 127.0.0.1:{serve_port}: {exc.strerror or exc}; "
                       "choose another port with --serve PORT") from None
