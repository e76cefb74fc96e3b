"""DNS test fixtures: dnsmasq serving the test's records on loopback, and a server that never answers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from beiran_testkit.dnsserver import BlackHoleDNS, Dnsmasq, dnsmasq_missing


@pytest.fixture
def dnsmasq(tmp_path: Path) -> Iterator[Dnsmasq]:
    """Not started: the test calls `set_records(...)` (which starts it) once it knows its nodes."""
    reason = dnsmasq_missing()
    if reason:
        pytest.skip(reason)
    server = Dnsmasq(tmp_path / "dnsmasq")
    yield server
    server.stop()


@pytest.fixture
def blackhole() -> Iterator[BlackHoleDNS]:
    server = BlackHoleDNS()
    yield server
    server.close()
