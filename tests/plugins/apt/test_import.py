"""Must show 6: `beiran apt import` seeds a node from an apt archives dir (only .debs apt's records
vouch for); another node then downloads those .debs from it, not from the origin."""

from __future__ import annotations

import json
import shutil

import pytest

from beiran_testkit.aptclient import AptClient, add_nodes, beiran, client_for
from beiran_testkit.aptrepo import build_deb

pytestmark = pytest.mark.cluster


def test_import_seeds_a_node_and_a_neighbour_downloads_from_it(cluster, repo, server, tmp_path):
    seeded, other = add_nodes(cluster, 2, repo)
    # an ordinary apt cache, filled straight from the origin (no Beiran involved)
    direct = AptClient(tmp_path / "direct", [repo.source_line(server.url)])
    direct.update()
    direct.download("hello", "pkg03")
    archives = direct.archives
    # ... plus things that must not get in: a look-alike .deb apt's records do not match, and junk
    build_deb(archives / "pkg04_1.0_all.deb", "pkg04", payload=100, seed=12345)
    (archives / "broken_1.0_all.deb").write_bytes(b"this is not an ar archive")
    shutil.copy(repo.packages["pkg05"].path, archives / "notes.txt")  # not a .deb name: not looked at
    from_origin = sum(server.debs_served().values())

    out = beiran(seeded, "apt", "import", str(archives), "--json", env={"APT_CONFIG": str(direct.config_file)})
    result = json.loads(out.stdout)
    assert result["imported"] == 3
    skipped = {f["file"].rsplit("/", 1)[-1]: f["skipped"] for f in result["files"] if f["skipped"]}
    assert skipped == {"pkg04_1.0_all.deb": "SHA256 differs from apt's record",
                       "broken_1.0_all.deb": skipped["broken_1.0_all.deb"]}
    assert skipped["broken_1.0_all.deb"].startswith("not a readable .deb")
    listed = {p["package"]: p for p in seeded.api("GET", "/apt/packages")["packages"]}
    assert set(listed) == {"hello", "libhello", "pkg03"} and {p["via"] for p in listed.values()} == {"import"}
    pins = {b["digest"]: b["pinned_by"] for b in seeded.api("GET", "/blobs")["blobs"]}
    assert pins[repo.packages["hello"].digest] == ["apt:hello_1.0_all"]
    # the human form says what happened and why the rest was skipped
    again = beiran(seeded, "apt", "import", str(archives), env={"APT_CONFIG": str(direct.config_file)}).stdout
    assert "imported 0 of 5" in again and "already in the store" in again and "SHA256 differs" in again

    c2 = client_for(tmp_path, "other", other, repo, server.url)
    c2.update()
    c2.download("hello", "pkg03")
    assert c2.debs() == repo.expected("hello", "libhello", "pkg03")
    assert sum(server.debs_served().values()) == from_origin  # the origin served the neighbour nothing
