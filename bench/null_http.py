"""The do-nothing server's HTTP front end: KServe v2 REST over the same core as its gRPC one, on Starlette
served by uvicorn in the same event loop, configured and embedded as the product's HTTP front end is
(``service.protocol.http_server``)."""

from __future__ import annotations

import argparse
import json
import socket

import grpc
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bench.null_core import HEADER_LENGTH, HTTP_STATUS, NullCore, NullError
from service.protocol.http_server import EmbeddedUvicorn, uvicorn_config
from service.sockets import listening_socket


async def http_error(request: Request, error: NullError) -> JSONResponse:
    return JSONResponse({"error": error.message}, status_code=HTTP_STATUS[error.code])


class NullHttp:
    """The KServe v2 REST routes over the same core; infer replies are prepared once per batch size."""

    def __init__(self, core: NullCore) -> None:
        self.core = core
        self._replies: dict[tuple[int, bool], Response] = {}

    def app(self) -> Starlette:
        routes = [
            Route("/v2/health/live", self.ok),
            Route("/v2/health/ready", self.ok),
            Route("/v2", self.server),
        ]
        for model in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
            routes += [
                Route(model, self.metadata),
                Route(f"{model}/ready", self.ready),
                Route(f"{model}/infer", self.infer, methods=["POST"]),
            ]
            if self.core.model.offer_config:
                routes.append(Route(f"{model}/config", self.config))
        return Starlette(routes=routes, exception_handlers={NullError: http_error})

    def _model(self, request: Request) -> tuple[str, str]:
        return request.path_params["model"], request.path_params.get("version", "")

    async def ok(self, request: Request) -> Response:
        return Response(status_code=200)

    async def server(self, request: Request) -> Response:
        return JSONResponse(
            {"name": "loadtest-null-server", "version": "0", "extensions": ["binary_tensor_data"]}
        )

    async def metadata(self, request: Request) -> Response:
        self.core.require_model(*self._model(request))
        return JSONResponse(self.core.metadata())

    async def ready(self, request: Request) -> Response:
        self.core.require_model(*self._model(request))
        return Response(status_code=200)

    async def config(self, request: Request) -> Response:
        self.core.require_model(*self._model(request))
        return JSONResponse(self.core.config())

    async def infer(self, request: Request) -> Response:
        required = self.core.required_header
        self.core.authorize(request.headers.get(required[0]) if required else None)
        body = await request.body()
        try:
            length = request.headers.get(HEADER_LENGTH)
            document = json.loads(body[: int(length)] if length is not None else body)
            shapes = [list(tensor["shape"]) for tensor in document["inputs"]]
            binary = bool(document.get("parameters", {}).get("binary_data_output")) or any(
                output.get("parameters", {}).get("binary_data") for output in document.get("outputs", ())
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            message = "malformed inference request JSON"
            raise self.core.reject("invalid_argument", grpc.StatusCode.INVALID_ARGUMENT, message) from None
        rows = self.core.admit(*self._model(request), shapes)
        if "id" in document:
            return self._reply(rows, binary, str(document["id"]))
        if (rows, binary) not in self._replies:
            self._replies[rows, binary] = self._reply(rows, binary)
        return self._replies[rows, binary]

    def _reply(self, rows: int, binary: bool, request_id: str | None = None) -> Response:
        m = self.core.model
        output = {"name": "logits", "datatype": "FP32", "shape": [rows, m.classes]}
        document = {"model_name": m.name, "model_version": m.version, "outputs": [output]}
        if request_id is not None:
            document["id"] = request_id
        if not binary:
            output["data"] = [0.0] * (rows * m.classes)
            return Response(json.dumps(document).encode(), media_type="application/json")
        output["parameters"] = {"binary_data_size": 4 * rows * m.classes}
        head = json.dumps(document).encode()
        return Response(
            head + bytes(4 * rows * m.classes),
            media_type="application/octet-stream",
            headers={HEADER_LENGTH: str(len(head))},
        )


def http_server(core: NullCore, args: argparse.Namespace) -> tuple[EmbeddedUvicorn, socket.socket]:
    config = uvicorn_config(
        NullHttp(core).app(), tls_cert=args.tls_cert, tls_key=args.tls_key, tls_client_ca=args.tls_client_ca
    )  # unreadable TLS files fail here, before the banner
    return EmbeddedUvicorn(config), listening_socket(args.host, args.http_port)
