"""Shared fixtures. The test kit lives in tests/lib so it is importable without putting the repo
root (and with it every plugin's source) on sys.path: tests run against the installed wheels."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "lib"))

from beiran_testkit.fixtures import *  # noqa: F403
