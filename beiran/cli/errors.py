"""The CLI's one error type, apart from the client so that `beiran --help` (which imports every
plugin's cli module) does not import http.client."""

from __future__ import annotations

import click


class CLIError(click.ClickException):
    """One readable line on stderr, exit status 1."""
