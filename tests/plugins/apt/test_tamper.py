"""Must show 5: bytes from a lying peer, and a Packages file that does not match its signed Release,
are never used; apt-get still succeeds, from the origin."""

from __future__ import annotations

import hashlib
import http.client

import pytest

from beiran_testkit.aptclient import APT_PORT, add_nodes, client_for
from beiran_testkit.aptrepo import build_deb
from beiran_testkit.daemon import wait_until

pytestmark = pytest.mark.cluster


def test_tampered_peer_bytes_and_a_forged_packages_file_are_never_used(cluster, repo, server, tmp_path):
    # a bigger package too, so a bad peer is caught after bytes already went to apt (then apt retries)
    repo.add("bigpkg", payload=3 << 20, seed=99, compress="none")
    repo.build()
    names = ["hello", "libhello", "bigpkg"]
    want = repo.expected(*names)
    liar, honest, holder = add_nodes(cluster, 3, repo, extra=[{"testing": {"corrupt_serving": True}}, {}, {}])
    c1 = client_for(tmp_path, "liar", liar, repo, server.url)
    c1.update()
    c1.download(*names)
    assert c1.debs() == want  # the liar stores good bytes; it only flips them when serving peers

    # a forged uncompressed Packages file: "hello" now points at an evil .deb that an honest node
    # holds (so, were the forged index believed, the evil bytes would verify and reach apt)
    evil = build_deb(tmp_path / "evil" / "hello_1.0_all.deb", "hello", payload=4096, seed=666)
    evil_digest = holder.add_blob(evil.read_bytes())
    wait_until(lambda: evil_digest in {b["digest"] for b in honest.api("GET", "/blobs?all=true")["blobs"]},
               10, what="the honest node to see the holder's evil blob")
    plain = repo.packages_dir / "Packages"
    text = plain.read_text().replace(repo.packages["hello"].sha256, evil_digest.split(":", 1)[1])
    plain.write_text(text)
    conn = http.client.HTTPConnection(honest.ip, APT_PORT, timeout=30)
    conn.request("GET", server.url + repo.url_path(str(plain.relative_to(repo.base))))
    resp = conn.getresponse()
    assert resp.status == 200 and resp.read() == text.encode()  # passed on byte for byte (apt would reject it)
    # ...and not believed: hello's pool path still gives the genuine .deb, never the evil one
    hello = repo.packages["hello"]
    conn.request("GET", server.url + repo.url_path(hello.pool_path))
    resp = conn.getresponse()
    got = resp.read()
    assert resp.status == 200 and hashlib.sha256(got).hexdigest() == hello.sha256
    conn.close()

    before = server.debs_served()
    c2 = client_for(tmp_path, "honest", honest, repo, server.url)
    c2.update()
    c2.download(*names)
    assert c2.debs() == want
    # every .deb came from the origin again (the liar's bytes failed verification), the evil one never
    assert server.debs_served() == {name: before[name] + 1 for name in want}
    assert evil_digest not in {b["digest"] for b in honest.api("GET", "/blobs")["blobs"]}
    assert honest.metrics()["beiran_verification_failures_total"] >= len(names)
    assert honest.api("GET", "/apt/sources")["counters"]["indexes_rejected"] == 1
    listed = {p["package"]: p["digest"] for p in honest.api("GET", "/apt/packages")["packages"]}
    assert listed == {n: repo.packages[n].digest for n in names}
