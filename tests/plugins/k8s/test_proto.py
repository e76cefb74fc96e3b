"""The CRI proto subset keeps the upstream runtime.v1 names and field numbers (what kubelet and
containerd put on the wire), and the committed generated code is what generate.sh produces."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from beiran_plugins.k8s.proto import api_pb2

TOOLS_VERSION = "1.85.1"  # as in beiran_plugins/k8s/proto/generate.sh
#: runtime.v1 (k8s.io/cri-api pkg/apis/runtime/v1/api.proto): message -> {field: number}
UPSTREAM = {
    "ImageSpec": {"image": 1, "annotations": 2, "user_specified_image": 18, "runtime_handler": 19, "image_ref": 20},
    "AuthConfig": {"username": 1, "password": 2, "auth": 3, "server_address": 4, "identity_token": 5,
                   "registry_token": 6},
    "PodSandboxMetadata": {"name": 1, "uid": 2, "namespace": 3, "attempt": 4},
    "PodSandboxConfig": {"metadata": 1, "hostname": 2, "log_directory": 3, "labels": 6, "annotations": 7},
    "ImageFilter": {"image": 1},
    "ListImagesRequest": {"filter": 1},
    "Image": {"id": 1, "repo_tags": 2, "repo_digests": 3, "size": 4, "uid": 5, "username": 6, "spec": 7,
              "pinned": 8},
    "ListImagesResponse": {"images": 1},
    "ImageStatusRequest": {"image": 1, "verbose": 2},
    "ImageStatusResponse": {"image": 1, "info": 2},
    "PullImageRequest": {"image": 1, "auth": 2, "sandbox_config": 3},
    "PullImageResponse": {"image_ref": 1},
    "RemoveImageRequest": {"image": 1},
    "ImageFsInfoResponse": {"image_filesystems": 1, "container_filesystems": 2},
    "FilesystemUsage": {"timestamp": 1, "fs_id": 2, "used_bytes": 3, "inodes_used": 4},
    "FilesystemIdentifier": {"mountpoint": 1},
    "UInt64Value": {"value": 1},
    "Int64Value": {"value": 1},
}


def test_field_numbers_are_upstream():
    fd = api_pb2.DESCRIPTOR
    assert fd.package == "runtime.v1"
    for message, fields in UPSTREAM.items():
        got = {f.name: f.number for f in fd.message_types_by_name[message].fields}
        assert got == fields, message
    service = fd.services_by_name["ImageService"]
    assert [m.name for m in service.methods] == ["ListImages", "ImageStatus", "PullImage", "RemoveImage",
                                                 "ImageFsInfo"]
    assert service.full_name == "runtime.v1.ImageService"


def test_generated_code_is_reproducible(tmp_path):
    if importlib.util.find_spec("grpc_tools") is None:
        pytest.skip(f"grpcio-tools is not installed (dev-only: pip install grpcio-tools=={TOOLS_VERSION})")
    if importlib.metadata.version("grpcio-tools") != TOOLS_VERSION:
        pytest.skip(f"generate.sh pins grpcio-tools {TOOLS_VERSION}; "
                    f"{importlib.metadata.version('grpcio-tools')} is installed")
    proto_dir = Path(api_pb2.__file__).parent
    root = proto_dir.parents[2]  # holds beiran_plugins/ (site-packages or the repo)
    out = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", str(root), f"--python_out={tmp_path}",
                          f"--grpc_python_out={tmp_path}", str(proto_dir / "api.proto")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for name in ("api_pb2.py", "api_pb2_grpc.py"):
        fresh = (tmp_path / "beiran_plugins" / "k8s" / "proto" / name).read_text()
        assert fresh == (proto_dir / name).read_text(), f"{name} is stale: run beiran_plugins/k8s/proto/generate.sh"
