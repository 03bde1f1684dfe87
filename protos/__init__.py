"""Triton-compatible (KServe v2) protobuf definitions and their generated stubs.

The ``.proto`` files here follow NVIDIA Triton's ``inference`` package field
for field, so Triton's clients and perf_analyzer can talk to our server. The
``*_pb2*.py`` modules are generated and checked in; regenerate them with
``python -m protos.generate``. Import the modules you need explicitly, e.g.
``from protos import grpc_service_pb2``; this package imports nothing itself.
"""
