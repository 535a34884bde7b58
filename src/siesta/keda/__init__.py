"""KEDA's External Scaler gRPC API, served by siesta so KEDA scales on siesta's policy.

`scaler.py` is the servicer and its server; `externalscaler_pb2*.py` are generated
from `proto/externalscaler.proto` by `scripts/gen-proto.sh` (grpcio-tools:
`python -m grpc_tools.protoc --proto_path=proto --python_out=src/siesta/keda
--pyi_out=src/siesta/keda --grpc_python_out=src/siesta/keda
proto/externalscaler.proto`, then the `_grpc` module's import made relative).
Do not edit those by hand.
"""
