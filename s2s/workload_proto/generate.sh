#!/bin/sh
# Regenerate workload_pb2.py / workload_pb2.pyi from workload.proto, s2s_revocations_pb2.py /
# s2s_revocations_pb2.pyi from s2s_revocations.proto and health_pb2.py / health_pb2.pyi from
# health.proto (run from anywhere):
#   sh s2s/workload_proto/generate.sh
# Needs grpcio-tools (the dev extra). The generated files are committed; no *_pb2_grpc.py is made
# because the handlers are registered by hand under the unpackaged service name (see workload.proto).
# The generated code checks the protobuf runtime version (pyproject pins protobuf to match).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
python=${PYTHON:-"$root/.venv/bin/python"}
cd "$root"
"$python" -m grpc_tools.protoc -I . --python_out=. --pyi_out=. s2s/workload_proto/workload.proto \
    s2s/workload_proto/s2s_revocations.proto s2s/workload_proto/health.proto
