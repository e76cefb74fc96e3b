"""Must show 4: a registry down, an invalid image reference and a malformed request answer with the
gRPC status that means it and a clear message, and the daemon is unharmed. (The runtime endpoint
down is in test_cri_pull.py: it stops and restarts a containerd.)"""

from __future__ import annotations

import grpc
import pytest

pytestmark = [pytest.mark.cluster]


def _code(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), err.value.details()


def test_bad_input_and_registry_down(env):
    node = env.nodes[2]
    with node.cri() as cri:
        for bad in ("Team/UPPER:v1", "a b:v1", "x:bad tag!", "", "repo@sha256:1234"):
            code, msg = _code(lambda bad=bad: cri.pull(bad))
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (bad, msg)
            assert "image" in msg and ("invalid" in msg or "empty" in msg), msg
        code, msg = _code(lambda: cri.status("Team/UPPER:v1"))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "lowercase" in msg, msg
        code, msg = _code(lambda: cri.remove("no spaces allowed"))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, msg
        code, msg = _code(lambda: cri.list("team/UPPER"))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, msg
        code, msg = _code(lambda: cri.pull("sha256:" + "ab" * 32))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "image ID" in msg, msg

        for method in ("PullImage", "ImageStatus", "ListImages", "RemoveImage"):
            code, msg = _code(lambda method=method: cri.raw(method, b"\x0a\xff\xff\xff\xff\x0f"))
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (method, msg)
            assert "malformed" in msg, msg
        code, msg = _code(lambda: cri.raw("StreamImages", b""))
        assert code == grpc.StatusCode.UNIMPLEMENTED, msg

        code, msg = _code(lambda: cri.pull(f"{env.dead_registry}/test/app:v1"))
        assert code == grpc.StatusCode.UNAVAILABLE, msg
        assert env.dead_registry in msg and "unavailable" in msg, msg

        ref, _ = env.image(layers=1, size=1000)
        code, msg = _code(lambda: cri.pull(ref.replace(":v", ":no-such-tag-v")))
        assert code == grpc.StatusCode.NOT_FOUND, msg

        # the daemon is unharmed: its API answers and a real pull works
        assert node.daemon.alive and node.daemon.api("GET", "/info")["uuid"] == node.daemon.uuid
        assert cri.pull(ref)
    assert ref in node.containerd.image_refs()
    calls = {p["name"]: p for p in node.daemon.api("GET", "/status")["plugins"]}["k8s"]["cri_calls"]
    assert calls["PullImage.INVALID_ARGUMENT"] >= 6 and calls["PullImage.UNAVAILABLE"] >= 1
