"""Keys where Debian tells admins to put them: a source's `signed-by` naming a keyring in a keyrings
directory (one-line `.list`, and deb822 `.sources` with an armored key), read from the daemon's
`apt_dir` (a temp dir here, never the machine's /etc/apt); a key that is not installed anywhere is
reported as missing, with its id and where it was looked for, not as a bad signature."""

from __future__ import annotations

import json
import shutil

import pytest

from beiran_testkit.aptclient import AptClient, add_nodes, beiran, proxy_of
from beiran_testkit.aptrepo import AptRepo, RepoServer

pytestmark = pytest.mark.cluster


def test_signed_by_keyrings_dir_and_deb822_sources_are_trusted_and_shared(cluster, repo, server, tmp_path):
    other = AptRepo(tmp_path / "repo-other", name="other")
    other.add("ohello", payload=4096, seed=7)
    other.build()
    other_server = RepoServer(other.www).start()
    try:
        etc = tmp_path / "etc-apt"
        keyrings, shared, parts = etc / "keyrings", tmp_path / "usr-share-keyrings", etc / "sources.list.d"
        for d in (keyrings, shared, parts):
            d.mkdir(parents=True)
        shutil.copy(repo.keyring, keyrings / "beiran-test.gpg")
        (shared / "other-archive.asc").write_text(other._gpg("--armor", "--export", other.fingerprint))
        (parts / "test.list").write_text(
            f"deb [arch=all,amd64 signed-by={keyrings / 'beiran-test.gpg'}] {server.url}/debian stable main\n")
        (parts / "other.sources").write_text(
            f"Types: deb\nURIs: {other_server.url}/other\nSuites: stable\nComponents: main\n"
            f"Signed-By: {shared / 'other-archive.asc'}\n\n"
            f"Types: deb\nURIs: http://127.0.0.1:9/disabled\nSuites: x\nComponents: main\nEnabled: no\n")

        n1, n2 = add_nodes(cluster, 2, None, apt_dir=str(etc), keyring_dirs=[str(keyrings), str(shared)])
        want = {**repo.expected("hello", "libhello"), **other.expected("ohello")}
        for node in (n1, n2):
            client = AptClient(tmp_path / f"apt-{node.name}", [], proxy=proxy_of(node), sources_parts=parts)
            client.update()
            client.download("hello", "ohello")
            assert client.debs() == want
        # the second node got every .deb from the first: both archives were trusted and shared
        assert server.debs_served() == {name: 1 for name in repo.expected("hello", "libhello")}
        assert other_server.debs_served() == {"ohello_1.0_all.deb": 1}
        sources = {s["key"]: s for s in json.loads(beiran(n2, "apt", "sources", "--json").stdout)}
        for base in (f"{server.url}/debian/", f"{other_server.url}/other/"):
            assert sources[base]["trust"] == "signed", sources[base]
        assert sources[f"{server.url}/debian/"]["signer"] == repo.fingerprint
        assert sources[f"{other_server.url}/other/"]["signer"] == other.fingerprint
    finally:
        other_server.stop()


def test_a_missing_key_is_reported_as_missing_with_its_id(cluster, repo, server, tmp_path):
    empty_etc, empty_keys = tmp_path / "empty-etc", tmp_path / "empty-keys"
    empty_etc.mkdir()
    empty_keys.mkdir()
    (node,) = add_nodes(cluster, 1, None, apt_dir=str(empty_etc), keyring_dirs=[str(empty_keys)])
    # apt itself has the key (signed-by); this node has none: .debs pass through, unshared
    client = AptClient(tmp_path / "apt", [repo.source_line(server.url)], proxy=proxy_of(node))
    client.update()
    client.download("hello")
    assert client.debs() == repo.expected("hello", "libhello")
    assert node.api("GET", "/apt/packages")["packages"] == []

    key_id = repo.fingerprint[-16:]
    (src,) = json.loads(beiran(node, "apt", "sources", "--json").stdout)
    assert src["trust"] == "key_missing", src
    assert src["missing_key"].upper().endswith(key_id), src
    assert str(empty_keys) + "/" in src["looked_in"] and f"{empty_etc}/trusted.gpg.d/" in src["looked_in"]
    assert "bad" not in src["last_error"] and key_id in src["last_error"].upper()
    table = beiran(node, "apt", "sources").stdout
    assert "key_missing" in table and key_id in table.upper()
    assert key_id in node.log().upper() and "not found" in node.log()
    metrics = node.request("GET", "/metrics")[2].decode()
    assert 'beiran_apt_releases_rejected_total{reason="key_missing"} 1.0' in metrics
    assert 'beiran_apt_releases_rejected_total{reason="bad_signature"} 0.0' in metrics
    assert 'beiran_apt_sources{trust="key_missing"} 1.0' in metrics
