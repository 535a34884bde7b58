#!/bin/sh
# Regenerates siesta's gRPC code for KEDA's External Scaler API from proto/externalscaler.proto.
# Needs the dev extras (grpcio-tools). The generated files are committed; run this after
# editing the .proto, from the repository root:  scripts/gen-proto.sh
set -eu
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
"$python" -m grpc_tools.protoc \
  --proto_path=proto \
  --python_out=src/siesta/keda \
  --pyi_out=src/siesta/keda \
  --grpc_python_out=src/siesta/keda \
  proto/externalscaler.proto
# grpc_tools writes `import externalscaler_pb2`; make it relative to the package.
sed -i 's/^import externalscaler_pb2 as/from . import externalscaler_pb2 as/' \
  src/siesta/keda/externalscaler_pb2_grpc.py
