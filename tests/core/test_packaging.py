"""The wheels and what an installation of some of them shows.

The dist/ checks need `BEIRAN_DIST` (the nox test sessions point it at dist/); the installation
checks run the `beiran` script installed next to this interpreter, with no daemon running."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

PLUGINS = ["apt", "dns", "docker", "k8s", "npm", "zeroconf"]
CORE_COMMANDS = {"blobs", "config", "daemon", "node", "plugins", "stats", "ui"}
WHEEL_NAME = re.compile(r"^(?P<dist>[A-Za-z0-9_.]+)-(?P<version>[^-]+)-.*\.whl$")


# -- dist/ --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def wheels() -> dict[str, Path]:
    """distribution name (beiran, beiran_dns, ...) -> wheel file."""
    dist = os.environ.get("BEIRAN_DIST")
    if not dist:
        pytest.skip("BEIRAN_DIST is not set (the nox test sessions point it at dist/)")
    found = sorted(Path(dist).glob("*.whl"))
    if not found:
        pytest.skip(f"no wheels in BEIRAN_DIST={dist}")
    out: dict[str, Path] = {}
    for whl in found:
        m = WHEEL_NAME.match(whl.name)
        assert m, f"not a wheel file name: {whl.name}"
        assert m["dist"] not in out, f"two wheels of {m['dist']} in {dist}: {out[m['dist']].name}, {whl.name}"
        out[m["dist"]] = whl
    return out


def names_in(whl: Path) -> list[str]:
    with zipfile.ZipFile(whl) as zf:
        return zf.namelist()


def test_seven_wheels(wheels: dict[str, Path]) -> None:
    assert sorted(wheels) == sorted(["beiran", *(f"beiran_{p}" for p in PLUGINS)])


def test_no_wheel_ships_the_namespace_init(wheels: dict[str, Path]) -> None:
    for whl in wheels.values():
        assert "beiran_plugins/__init__.py" not in names_in(whl), whl.name


def test_core_wheel_holds_only_core(wheels: dict[str, Path]) -> None:
    whl = wheels["beiran"]
    names = names_in(whl)
    dist_info = f"beiran-{WHEEL_NAME.match(whl.name)['version']}.dist-info/"
    stray = [n for n in names if not n.startswith(("beiran/", dist_info))]
    assert stray == []
    assert "beiran/cli/main.py" in names
    with zipfile.ZipFile(whl) as zf:
        entry_points = zf.read(dist_info + "entry_points.txt").decode()
    assert re.search(r"^beiran\s*=\s*beiran\.cli\.main:main$", entry_points, re.M)
    assert re.search(r"^beirand\s*=", entry_points, re.M)


@pytest.mark.parametrize("plugin", PLUGINS)
def test_plugin_wheel_holds_only_its_plugin(wheels: dict[str, Path], plugin: str) -> None:
    whl = wheels[f"beiran_{plugin}"]
    names = names_in(whl)
    dist_info = f"beiran_{plugin}-{WHEEL_NAME.match(whl.name)['version']}.dist-info/"
    stray = [n for n in names if not n.startswith((f"beiran_plugins/{plugin}/", dist_info))]
    assert stray == [], f"{whl.name} holds files outside beiran_plugins/{plugin}/"
    assert f"beiran_plugins/{plugin}/__init__.py" in names
    assert f"beiran_plugins/{plugin}/plugin.py" in names
    with zipfile.ZipFile(whl) as zf:
        metadata = zf.read(dist_info + "METADATA").decode()
    assert re.search(r"^Requires-Dist: beiran\b(?![-_])", metadata, re.M), "a plugin must depend on the core"


# -- this installation ----------------------------------------------------------------------------
def clean_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("BEIRAN_")}
    env["BEIRAN_SOCKET"] = str(tmp_path / "no-daemon.sock")  # never a running daemon
    return env


@pytest.fixture()
def beiran_exe() -> Path:
    exe = Path(sys.executable).parent / "beiran"
    if not exe.exists():
        pytest.skip(f"no beiran script next to {sys.executable} (beiran is not installed here)")
    return exe


@pytest.fixture()
def installed(tmp_path: Path) -> list[str]:
    """Plugins installed in this environment, seen from a scratch directory (not the source tree)."""
    code = ("import importlib, json, pkgutil\n"
            "try:\n"
            "    ns = importlib.import_module('beiran_plugins')\n"
            "except ImportError:\n"
            "    print('[]')\n"
            "else:\n"
            "    print(json.dumps(sorted(m.name for m in pkgutil.iter_modules(ns.__path__))))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=clean_env(tmp_path),
                         capture_output=True, text=True, check=True, timeout=60).stdout
    names = json.loads(out)
    expected = os.environ.get("BEIRAN_TEST_PLUGINS")
    if expected is not None:  # set by the nox session: what it installed
        assert names == sorted(filter(None, expected.split(","))), "the venv holds other plugins than nox installed"
    return names


def test_plugins_json_lists_installed_plugins(beiran_exe: Path, installed: list[str], tmp_path: Path) -> None:
    proc = subprocess.run([str(beiran_exe), "plugins", "--json"], cwd=tmp_path, env=clean_env(tmp_path),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert sorted(r["name"] for r in rows) == installed
    for r in rows:
        assert r["status"] == "daemon not running"
        if os.environ.get("BEIRAN_DIST"):  # installed from the wheels: each plugin knows its wheel
            assert r["distribution"] == f"beiran-{r['name']}"


def help_commands(text: str) -> set[str]:
    _, _, section = text.partition("\nCommands:\n")
    return {line.split()[0] for line in section.splitlines() if line.startswith("  ") and line.strip()}


def test_help_lists_installed_plugins(beiran_exe: Path, installed: list[str], tmp_path: Path) -> None:
    proc = subprocess.run([str(beiran_exe), "--help"], cwd=tmp_path, env=clean_env(tmp_path),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    commands = help_commands(proc.stdout)
    assert CORE_COMMANDS <= commands, proc.stdout
    assert commands - CORE_COMMANDS == set(installed), proc.stdout


def test_example_config_loads(tmp_path: Path) -> None:
    """contrib/config.example.toml (shipped beside the systemd unit) is a valid config."""
    example = Path(__file__).resolve().parents[2] / "contrib" / "config.example.toml"
    if not example.is_file():
        pytest.skip(f"{example} not found (not run from a checkout)")
    from beiran.config import load_config

    cfg = load_config(example, environ={})
    assert cfg.listen == "0.0.0.0:8888"
    assert str(cfg.socket_path) == "/run/beiran/beirand.sock"
    assert sorted(cfg.plugins) == PLUGINS
