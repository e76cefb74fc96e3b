#!/usr/bin/env bash
# Regenerate api_pb2.py and api_pb2_grpc.py from api.proto.
#
#   beiran_plugins/k8s/proto/generate.sh            # with the python on PATH
#   PYTHON=/tmp/dev/bin/python beiran_plugins/k8s/proto/generate.sh
#
# Needs grpcio-tools (a dev-only dependency; the plugin itself needs grpcio + protobuf only), at
# the version below so the output is byte-for-byte reproducible. The imports in the generated code
# are package-qualified (beiran_plugins.k8s.proto.api_pb2) because protoc runs from the repo root.
# After a grpcio-tools upgrade, raise the grpcio/protobuf floors in beiran_plugins/k8s/pyproject.toml
# to the GRPC_GENERATED_VERSION and gencode version the new files print.
set -euo pipefail
GRPC_TOOLS_VERSION=1.85.1
PYTHON=${PYTHON:-python3}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
out=${1:-$root}
have=$("$PYTHON" -c 'import importlib.metadata as m; print(m.version("grpcio-tools"))' 2>/dev/null || true)
if [ "$have" != "$GRPC_TOOLS_VERSION" ]; then
    echo "generate.sh: need grpcio-tools==$GRPC_TOOLS_VERSION for $PYTHON (have: ${have:-none});" >&2
    echo "  $PYTHON -m pip install grpcio-tools==$GRPC_TOOLS_VERSION" >&2
    exit 1
fi
cd "$root"
"$PYTHON" -m grpc_tools.protoc -I . --python_out="$out" --grpc_python_out="$out" \
    beiran_plugins/k8s/proto/api.proto
