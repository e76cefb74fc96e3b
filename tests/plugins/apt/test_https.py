"""Must show 4: an https:// archive through the mirror path, its certificate verified against the
configured CA; a certificate nobody vouches for is refused with an error apt shows. The archive has no
InRelease: the Release + Release.gpg chain is the one checked."""

from __future__ import annotations

import http.client
import json

import pytest

from beiran_testkit.aptclient import APT_PORT, AptClient, add_nodes, beiran
from beiran_testkit.aptrepo import RepoServer
from beiran_testkit.pki import make_ca, make_self_signed

pytestmark = pytest.mark.cluster


def test_https_archive_through_the_mirror_path_and_a_rogue_certificate_refused(cluster, repo, tmp_path):
    repo.release(inrelease=False)  # this archive has Release + Release.gpg only, as older ones do
    ca, cert, key = make_ca(tmp_path / "pki")
    good = RepoServer(repo.www, tls=(cert, key)).start()
    rogue_cert, rogue_key = make_self_signed(tmp_path / "rogue")
    rogue = RepoServer(repo.www, tls=(rogue_cert, rogue_key)).start()
    try:
        (node,) = add_nodes(cluster, 1, repo, ca_file=str(ca))
        mirror = f"http://{node.ip}:{APT_PORT}/https/127.0.0.1:{good.port}"
        client = AptClient(tmp_path / "apt", [repo.source_line(mirror)])
        client.update()
        client.download("hello")
        assert client.debs() == repo.expected("hello", "libhello")
        assert good.debs_served() == {name: 1 for name in repo.expected("hello", "libhello")}
        sources = json.loads(beiran(node, "apt", "sources", "--json").stdout)
        assert [(s["key"], s["mode"], s["trust"]) for s in sources] == [
            (f"https://127.0.0.1:{good.port}/debian/", "mirror", "signed")]

        bad = AptClient(tmp_path / "apt-bad", [repo.source_line(f"http://{node.ip}:{APT_PORT}/https/127.0.0.1:"
                                                              f"{rogue.port}")])
        out = bad.update(check=False)
        text = out.stdout + out.stderr
        assert "CERTIFICATE_VERIFY_FAILED" in text, text
        assert rogue.requests == {}  # the TLS handshake failed: no request reached it
        conn = http.client.HTTPConnection(node.ip, APT_PORT, timeout=30)
        conn.request("GET", f"/https/127.0.0.1:{rogue.port}/debian/dists/stable/InRelease")
        resp = conn.getresponse()
        body = json.loads(resp.read())
        assert resp.status == 502 and "TLS" in resp.reason and "CERTIFICATE_VERIFY_FAILED" in body["message"]
        conn.close()
    finally:
        good.stop()
        rogue.stop()
