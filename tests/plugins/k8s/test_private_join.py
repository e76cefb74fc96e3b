"""Issue 13: a private pull goes through the core fetcher with a local-only opener (kubelet's
credentials), so a concurrent request for the same private blob (the runtime through the mirror)
joins the one download instead of failing or fetching it again. The counting proxy in front of the
registry demands credentials and holds the layer's transfer until both requests are in."""

from __future__ import annotations

import hashlib
import threading
import urllib.request

import pytest

from beiran_testkit.daemon import wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def test_cri_pull_with_credentials_and_mirror_request_share_one_origin_fetch(env):
    node = env.nodes[0]
    ref, image = env.image(layers=2, size=2_000_000)
    repo = ref.split("/", 1)[1].rsplit(":", 1)[0]
    layer = image.layers[-1]
    proxy = env.registry.proxy
    proxy.reset()
    proxy.auth = {"scheme": "bearer", "user": "carol", "password": "carol-pw"}  # now a private image
    release = threading.Event()
    proxy.hold[f"/blobs/{layer.digest}$"] = release
    results: dict[str, object] = {}

    def cri_pull() -> None:
        try:
            with node.cri() as cri:
                results["cri"] = cri.pull(ref, "carol", "carol-pw")
        except Exception as exc:  # noqa: BLE001 - reported by the assertions below
            results["cri"] = exc

    def mirror_get() -> None:
        url = f"{node.daemon.url}/v2/{repo}/blobs/{layer.digest}?ns={env.registry.name}"
        try:
            with urllib.request.urlopen(url, timeout=60) as resp:
                results["mirror"] = (resp.status, resp.read())
        except Exception as exc:  # noqa: BLE001
            results["mirror"] = exc

    try:
        t1 = threading.Thread(target=cri_pull)
        t1.start()
        wait_until(lambda: proxy.blob_gets()[layer.digest] >= 1, 30, what="the pull to reach the layer")
        t2 = threading.Thread(target=mirror_get)
        t2.start()
        t2.join(2)
        waiting = t2.is_alive()  # the mirror request is waiting on the held download (joined it)
    finally:
        release.set()
    t1.join(120)
    t2.join(60)
    gets = proxy.blob_gets()
    proxy.reset()
    print(f"\nmirror request waited on the download: {waiting}; origin GETs of the layer: "
          f"{gets[layer.digest]}; cri: {results.get('cri')!r}; mirror: "
          f"{results['mirror'][0] if isinstance(results.get('mirror'), tuple) else results.get('mirror')!r}")
    assert results.get("cri") == image.config.digest, results.get("cri")
    status, body = results["mirror"] if isinstance(results.get("mirror"), tuple) else (None, b"")
    assert status == 200 and "sha256:" + hashlib.sha256(body).hexdigest() == layer.digest, results.get("mirror")
    assert waiting
    assert gets[layer.digest] == 1, gets
    assert ref in node.containerd.image_refs()
