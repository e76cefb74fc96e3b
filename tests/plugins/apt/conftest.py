"""Fixtures for the apt plugin: a signed test archive of 20 packages served over HTTP.
Helpers live in the kit (beiran_testkit.aptrepo / aptclient)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from beiran_testkit.aptrepo import AptRepo, RepoServer, build_repo

for tool in ("apt-get", "dpkg-deb", "dpkg-scanpackages", "apt-ftparchive", "gpg", "gpgv", "openssl"):
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed (apt-get install apt-utils dpkg-dev gnupg gpgv openssl)",
                    allow_module_level=True)
pytest.importorskip("apt_pkg", reason="python3-apt is needed (Debian's /usr/bin/python3)")


@pytest.fixture
def repo(tmp_path: Path) -> AptRepo:
    return build_repo(tmp_path / "repo")


@pytest.fixture
def server(repo: AptRepo) -> Iterator[RepoServer]:
    srv = RepoServer(repo.www).start()
    yield srv
    srv.stop()
