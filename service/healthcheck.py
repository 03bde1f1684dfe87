"""``python -m service.healthcheck [--address 127.0.0.1:8003] [--service NAME] [--timeout 2] [TLS flags]``

Exit 0 when the gRPC health service reports SERVING for ``--service`` ("" = the server is ready;
"liveness" = the process is up; a model name = that model is ready), 1 otherwise. The Docker HEALTHCHECK.
The default address is the health port, answered apart from inference (the gRPC port works too).
"""

from __future__ import annotations

import argparse
import sys

import grpc

from protos import health_pb2, health_pb2_grpc
from service.client import add_connection_arguments, connection_options, open_channel


def check(address: str, service: str = "", timeout: float = 2.0, **connection) -> tuple[bool, str]:
    """(serving?, status or error text); ``connection``: :func:`service.client.open_channel`'s TLS
    options."""
    with open_channel(address, **connection) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as e:
            return False, f"{e.code().name}: {e.details()}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    return response.status == health_pb2.HealthCheckResponse.SERVING, status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m service.healthcheck",
        description="Exit 0 when the gRPC health service reports SERVING.",
    )
    parser.add_argument("--address", default="127.0.0.1:8003", help="the health port (or the gRPC port)")
    parser.add_argument("--service", default="", help='health service name ("" = server readiness)')
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds")
    add_connection_arguments(parser)
    args = parser.parse_args(argv)
    try:
        options = connection_options(args)
    except (ValueError, OSError) as e:
        parser.error(str(e))
    options.pop("headers")  # health is never restricted
    serving, status = check(args.address, args.service, args.timeout, **options)
    print(
        f"{args.address} {args.service or '(server)'}: {status}", file=sys.stdout if serving else sys.stderr
    )
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())
