"""The CLI must start fast: showing help imports no daemon, database or plugin libraries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

#: top-level modules `beiran --help` must not import (docker SDK, python-apt, grpc, zeroconf,
#: dnspython, the daemon's web framework and ORM, the HTTP client the CLI needs only to talk, and the
#: progress and TOML-writing libraries only some commands need)
HEAVY = ["docker", "apt_pkg", "apt", "grpc", "zeroconf", "dns", "tornado", "peewee", "http", "rich", "tomli_w"]

pytestmark = pytest.mark.each_plugin  # every installed plugin's CLI must import lazily

PROBE = """
import json, sys
from beiran.cli.main import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
sys.stdout.flush()
print("\\n@@MODULES@@" + json.dumps(sorted(sys.modules)))
"""


def loaded_modules(args: list[str], cwd: Path) -> list[str]:
    """Run the CLI with `args` in a fresh interpreter; the modules it had imported at the end."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("BEIRAN_")}
    # A socket that cannot exist, so nothing here ever talks to a running daemon.
    env["BEIRAN_SOCKET"] = str(cwd / "no-daemon.sock")
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)
    marker = proc.stdout.rfind("@@MODULES@@")
    assert marker >= 0, f"the probe did not finish: rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout[marker + len("@@MODULES@@"):])


def heavy_in(modules: list[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in HEAVY)


@pytest.mark.parametrize("args", [["--help"], ["node", "--help"], ["blobs", "--help"],
                                  ["plugins", "--help"], ["daemon", "--help"], ["--version"]],
                         ids=lambda a: " ".join(a))
def test_help_imports_nothing_heavy(args: list[str], tmp_path: Path) -> None:
    modules = loaded_modules(args, tmp_path)
    assert "beiran.cli.main" in modules
    assert heavy_in(modules) == []


def test_help_imports_no_daemon_or_plugin_internals(tmp_path: Path) -> None:
    """Help may import each plugin's `cli` module (for its one-line help), never a plugin's
    plugin/api/models modules nor the daemon's parts."""
    modules = loaded_modules(["--help"], tmp_path)
    daemon_parts = {"beiran.daemon", "beiran.store", "beiran.peer", "beiran.fetch", "beiran.models",
                    "beiran.handlers", "beiran.context"}
    plugin_parts = {"plugin", "api", "models"}

    def internal(name: str) -> bool:
        parts = name.split(".")
        if parts[0] == "beiran":
            return ".".join(parts[:2]) in daemon_parts
        return parts[0] == "beiran_plugins" and len(parts) > 2 and parts[2] in plugin_parts

    internals = [m for m in modules if internal(m)]
    assert internals == []
