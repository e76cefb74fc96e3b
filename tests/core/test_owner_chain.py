"""A cold blob's owner that cannot fetch it passes it down the rendezvous chain (rank 2, then 3)
instead of sending the requester to the origin itself: every requester walks the same chain, so the
origin is still asked once. What made this matter: an apt node picked as owner for an archive it
never saw refused, and each requester then went to the archive on its own. Real daemons."""

from __future__ import annotations

import hashlib

import pytest

from beiran_testkit.origin import Origin

pytestmark = pytest.mark.cluster


def test_an_owner_that_cannot_fetch_passes_the_blob_to_the_next_rank_not_to_every_requester(cluster, origin,
                                                                                             tmp_path):
    broken = Origin(tmp_path / "broken").start()  # the first owner's idea of origin `o`: a failing mirror
    broken.fail_status = 502
    try:
        good = {"origins": {"o": origin.url}}
        requester = cluster.add(good)
        first = cluster.add({"origins": {"o": broken.url}})
        second = cluster.add(good)
        cluster.wait_connected()
        from beiran.fetch import placement

        i = 0
        while True:  # data whose digest ranks the broken node first, the good one second
            data = f"chain-{i}-".encode() * 40_000
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            if placement.rank(digest, [requester.uuid, first.uuid, second.uuid])[:2] == [first.uuid,
                                                                                        second.uuid]:
                break
            i += 1
        origin.put("d", data)
        final = requester.fetch(digest, len(data), {"plugin": "origin", "name": "o", "path": "/d"})
        m = requester.metrics()
        print(f"\nrequester's bytes by source: peer {m.get('beiran_fetch_bytes_total{source=peer}', 0)}, "
              f"origin {m.get('beiran_fetch_bytes_total{source=origin}', 0)}; broken mirror asked "
              f"{broken.requests['/d']}, origin asked {origin.requests['/d']}")
        assert "error" not in final, final
        assert broken.requests["/d"] == 1  # rank 1 tried, and failed
        assert origin.requests["/d"] == 1  # rank 2 fetched, for the requester
        assert m.get("beiran_fetch_bytes_total{source=origin}", 0) == 0
        assert m.get("beiran_fetch_bytes_total{source=peer}", 0) == len(data)
        assert hashlib.sha256(requester.blob(digest)).hexdigest() == digest.split(":")[1]
    finally:
        broken.stop()
