"""A do-nothing KServe v2 gRPC server: the protocol's floor for benchmarks.

Same framework as the real server (grpc.aio, the same stubs and options); ModelInfer answers every request
with a correctly shaped FP32 zero output ``[rows, classes]`` without looking at the input's values.

``python -m service.null_server --port 8011 --classes 10``
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

import grpc

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from service.grpc_server import server_options


class NullServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, classes: int, output_name: str = "logits") -> None:
        self.classes = classes
        self.output_name = output_name
        self._zeros: dict[int, bytes] = {}

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=True)

    async def ModelReady(self, request, context):
        return pb.ModelReadyResponse(ready=True)

    async def ModelInfer(self, request, context):
        if not request.inputs or not request.inputs[0].shape:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "request needs one input with a batch dimension"
            )
        rows = request.inputs[0].shape[0]
        zeros = self._zeros.get(rows)
        if zeros is None:
            zeros = self._zeros[rows] = bytes(rows * self.classes * 4)
        response = pb.ModelInferResponse(model_name=request.model_name, model_version="1", id=request.id)
        response.outputs.add(name=self.output_name, datatype="FP32", shape=(rows, self.classes))
        response.raw_output_contents.append(zeros)
        return response


async def serve_null(host: str, port: int, classes: int, max_message_bytes: int = 64 * 1024 * 1024) -> None:
    server = grpc.aio.server(options=server_options(max_message_bytes))
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(NullServicer(classes), server)
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    logging.getLogger(__name__).info("null KServe v2 server on %s:%d (%d classes)", host, port, classes)
    await stop.wait()
    await server.stop(grace=1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m service.null_server", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8011)
    parser.add_argument("--classes", type=int, default=10, help="columns of the zero output")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve_null(args.host, args.port, args.classes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
