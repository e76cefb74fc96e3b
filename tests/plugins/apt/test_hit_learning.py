"""Index learning whatever apt does: apt's lists already exist when Beiran first sees it (installed
later, or restarted), so `apt-get update` is all `Hit:` (the origin answers If-Modified-Since with
304) and apt never asks for a Packages file; Beiran learns it itself, so the .debs are shared from
the first `apt-get install` on."""

from __future__ import annotations

import pytest

from beiran_testkit.aptclient import client_for

pytestmark = pytest.mark.cluster


def _all_hit(out: str) -> None:
    lines = [ln for ln in out.splitlines() if ln[:4] in ("Hit:", "Get:", "Ign:", "Err:")]
    assert lines and all(ln.startswith("Hit:") for ln in lines), out


def test_after_a_restart_with_apt_lists_kept_debs_are_shared_from_the_first_install(
        cluster, repo, server, tmp_path):
    from beiran_testkit.aptclient import add_nodes

    n1, n2 = add_nodes(cluster, 2, repo)
    want = repo.expected("hello", "libhello")
    # apt's lists are made before Beiran is in the path (straight from the archive)
    client_for(tmp_path, "c1", None, repo, server.url).update()
    c1 = client_for(tmp_path, "c1", n1, repo, server.url)  # same apt dirs, now through node 1
    _all_hit(c1.update().stdout)
    n1.stop()
    n1.start()  # a restart, apt's lists kept
    cluster.wait_connected([n1, n2])
    before = server.count("/InRelease", status=304)
    _all_hit(c1.update().stdout)
    assert server.count("/InRelease", status=304) == before + 1  # the origin said 304 too
    c1.download("hello")
    assert c1.debs() == want
    assert server.debs_served() == {name: 1 for name in want}
    assert {p["package"] for p in n1.api("GET", "/apt/packages")["packages"]} == {"hello", "libhello"}

    # a second node gets every .deb from the first, none from the archive
    c2 = client_for(tmp_path, "c2", n2, repo, server.url)
    c2.update()
    c2.download("hello")
    assert c2.debs() == want
    assert server.debs_served() == {name: 1 for name in want}
