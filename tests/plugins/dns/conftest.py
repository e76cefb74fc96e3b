"""DNS test fixtures: a DNS server that never answers (dnsmasq is the test kit's `dnsmasq`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from beiran_testkit.dnsserver import BlackHoleDNS


@pytest.fixture
def blackhole() -> Iterator[BlackHoleDNS]:
    server = BlackHoleDNS()
    yield server
    server.close()
