"""Shared fixtures. The test kit lives in tests/lib so it is importable without putting the repo
root (and with it every plugin's source) on sys.path: tests run against the installed wheels."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "lib"))

from beiran_testkit.fixtures import *  # noqa: F403


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist (`--dist loadgroup`, see noxfile.py) tests go to workers one by one; the
    tests of a module that use a module-scoped fixture (a cluster with containerds, wheels built
    once) stay together on one worker so the fixture is still set up once per module."""
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        if info is None:
            continue
        if any(defs and defs[-1].scope == "module" for defs in info.name2fixturedefs.values()):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
