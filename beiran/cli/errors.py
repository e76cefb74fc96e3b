"""The CLI's one error type, apart from the client so that `beiran --help` (which imports every
plugin's cli module) does not import http.client."""

from __future__ import annotations

import click


class CLIError(click.ClickException):
    """One readable line on stderr, exit status 1 (with --json, also `{"error": code, "message": ...}`
    on stdout)."""

    code = "error"


class DaemonError(CLIError):
    """The daemon answered with an error: its HTTP status and error code, to branch on."""

    def __init__(self, message: str, status: int, code: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


class DaemonNotRunning(CLIError):
    """Nothing answers on the daemon's socket: commands that can work from the config file alone
    (e.g. `beiran k8s configure-containerd` in an init container) catch this one."""

    code = "daemon_not_running"
