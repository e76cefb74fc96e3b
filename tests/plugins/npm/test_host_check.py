"""DNS rebinding (issue 12, item 8): a web page on the machine whose name now resolves to 127.0.0.1
must not be able to use the npm proxy (nor its upstream credentials). Only a `Host` naming the node."""

from __future__ import annotations

import pytest

from beiran_testkit.verdaccio import ALPHA, npm_daemon_config

pytestmark = pytest.mark.cluster


def test_npm_proxy_refuses_a_rebound_host(cluster, upstream, registry):
    (node,) = cluster.start(1, config=npm_daemon_config(upstream.url))
    port = node.url.rsplit(":", 1)[1]
    status, _, body = node.tcp("GET", f"/npm/{ALPHA}", headers={"Host": f"evil.example:{port}"})
    assert status == 403 and b"does not name this node" in body, (status, body[:200])
    assert not upstream.requests  # nothing went upstream on the page's behalf
    status, _, body = node.tcp("GET", f"/npm/{ALPHA}", headers={"Host": f"localhost:{port}"})
    assert status == 200 and ALPHA.encode() in body
