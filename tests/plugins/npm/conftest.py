"""npm test fixtures: one verdaccio per session with the test packages, and per test a fresh counting
proxy in front of it (the daemons' upstream), so each test counts only its own origin requests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from beiran_testkit.counting_proxy import CountingProxy
from beiran_testkit.verdaccio import NpmRegistry, Verdaccio, have_npm, publish_test_packages


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NpmRegistry]:
    if not have_npm():
        pytest.skip("node and npm are needed for the npm plugin tests (apt-get install nodejs npm)")
    base = tmp_path_factory.mktemp("verdaccio")
    v = Verdaccio(base).start()
    try:
        yield publish_test_packages(v, base)
    finally:
        v.stop()


@pytest.fixture
def upstream(registry: NpmRegistry) -> Iterator[CountingProxy]:
    proxy = CountingProxy(registry.verdaccio.url).start()
    yield proxy
    proxy.close()


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """Scratch dir for npm projects and caches."""
    d = tmp_path / "w"
    d.mkdir()
    return d
