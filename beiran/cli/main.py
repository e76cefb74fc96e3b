"""`beiran`: core commands plus one lazily-loaded group per installed plugin."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click

from beiran import __version__
from beiran.cli.errors import CLIError

#: what click raises for a group run without a command (click >= 8.2; older ones print the help)
NO_ARGS_IS_HELP: type[click.ClickException] | tuple[()] = getattr(click.exceptions, "NoArgsIsHelpError", ())
#: `BEIRAN_TRACEBACK=1 beiran ...` shows an unexpected error's traceback instead of one line
TRACEBACK_ENV = "BEIRAN_TRACEBACK"

CORE_COMMANDS = {
    "daemon": "beiran.cli.daemon:daemon",
    "node": "beiran.cli.node:node",
    "plugins": "beiran.cli.plugins:plugins",
    "config": "beiran.cli.plugins:config",
    "blobs": "beiran.cli.blobs:blobs",
    "stats": "beiran.cli.blobs:stats",
    "ui": "beiran.cli.ui:ui",
}


class BeiranCLI(click.Group):
    """Core commands are imported on use; plugin groups come from `beiran_plugins.<name>.cli`.
    Every error, a mistyped option included, is one line on stderr (and JSON on stdout with --json)."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        from beiran.cli import output

        argv = list(sys.argv[1:] if args is None else args)
        output.json_requested = False
        try:
            rv = super().main(argv, prog_name, complete_var, False, **extra)
        except click.Abort:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except NO_ARGS_IS_HELP as exc:  # `beiran`, `beiran node`: the help, as click shows it
            exc.show()
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            wants_json = output.json_requested or (
                isinstance(exc, click.UsageError) and "--json" in argv[:argv.index("--") if "--" in argv else None])
            report(exc, wants_json)
            sys.exit(exc.exit_code)
        except BrokenPipeError:  # `beiran blobs list | head`: the reader has all it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(141)
        except OSError as exc:  # a file or directory the command was given (-o PATH, ...)
            where = f"{exc.filename}: " if exc.filename else ""
            report(CLIError(f"{where}{exc.strerror or exc}"), output.json_requested)
            sys.exit(1)
        except Exception as exc:  # a bug still gets one line; the traceback on request
            if os.environ.get(TRACEBACK_ENV) == "1":
                raise
            report(CLIError(f"unexpected {type(exc).__name__}: {exc} (a bug in beiran: {TRACEBACK_ENV}=1 shows "
                            "the traceback for a report)"), output.json_requested)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)  # ctx.exit(N) comes back as N

    def list_commands(self, ctx: click.Context) -> list[str]:
        from beiran.plugin_loader import plugin_names

        return sorted(CORE_COMMANDS) + [n for n in plugin_names() if n not in CORE_COMMANDS]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in CORE_COMMANDS:
            modname, attr = CORE_COMMANDS[name].split(":")
            command: click.Command = getattr(importlib.import_module(modname), attr)
            return command
        from beiran.plugin_loader import NAMESPACE, plugin_names

        if name not in plugin_names():
            return None
        try:
            module = importlib.import_module(f"{NAMESPACE}.{name}.cli")
            group: click.Command = module.cli
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the CLI
            return _broken(name, exc)
        if group.name != name:
            group.name = name
        return group


def report(exc: click.ClickException, as_json: bool) -> None:
    """An error as one line on stderr ("Error: ..."; a usage error says which --help to read), and
    with --json also as `{"error": CODE, "message": ..., "status": HTTP status}` on stdout."""
    message = exc.format_message()
    code = getattr(exc, "code", "") or "error"
    if not code.replace("_", "").isalnum():  # npm-style bodies carry the message as "error"
        code = "error"
    if isinstance(exc, click.UsageError):
        code = "usage"
        if isinstance(exc, click.NoSuchOption) and exc.option_name == "--socket" and exc.ctx is not None:
            root, _, sub = exc.ctx.command_path.partition(" ")
            message = f"--socket goes before the command: `{root} --socket PATH {sub} ...`"
        elif exc.ctx is not None:
            message = f"{message.rstrip('.')} (see `{exc.ctx.command_path} --help`)"
    if as_json:
        import json

        body: dict[str, Any] = {"error": code, "message": message}
        if getattr(exc, "status", None):
            body["status"] = exc.status  # type: ignore[attr-defined]  # DaemonError's HTTP status
        click.echo(json.dumps(body))
    click.echo(f"Error: {' '.join(message.split())}", err=True)


def _broken(name: str, exc: Exception) -> click.Command:
    @click.command(name=name, short_help=f"(plugin failed to load: {type(exc).__name__})")
    def cmd() -> None:
        raise CLIError(f"plugin {name} failed to load: {exc}")
    return cmd


@click.group(cls=BeiranCLI, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--socket", "socket_path", envvar="BEIRAN_SOCKET", metavar="PATH",
              help="The daemon's unix socket (default: from the config, else a quick-start daemon's "
              "./.beiran-data/beirand.sock).")
@click.version_option(__version__, prog_name="beiran")
@click.pass_context
def cli(ctx: click.Context, socket_path: str | None) -> None:
    """Beiran: one daemon per machine so every package crosses the WAN once.

    Image layers, .debs and npm tarballs one node has are fetched by its neighbours from it.
    """
    source = ctx.get_parameter_source("socket_path")
    ctx.obj = {"socket": socket_path,
               "socket_from": "BEIRAN_SOCKET" if source == click.core.ParameterSource.ENVIRONMENT else "--socket"}


def client(ctx: click.Context | None = None, timeout: float = 60.0) -> Any:
    """The daemon client for the current command (honours --socket)."""
    from beiran.cli.client import DaemonClient

    ctx = ctx or click.get_current_context()
    root = ctx.find_root()
    obj = root.obj or {}
    return DaemonClient(obj.get("socket"), timeout=timeout, origin=obj.get("socket_from", "--socket"))


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="beiran", standalone_mode=True)
