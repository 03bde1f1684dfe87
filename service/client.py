"""A small KServe v2 client for other services, and ``python -m service.client``.

from service.client import InferenceClient
with InferenceClient("127.0.0.1:8001") as client:
    logits = client.infer("lenet5", batch)                   # FP32 [N, C, H, W] -> [N, classes]
    [[top]] = client.classify("resnet18", ["cat.jpg"])        # encoded images -> labels
    print(top.label, top.score)

python -m service.client classify --model resnet18 [--url 127.0.0.1:8001] [--top-k 5] cat.jpg dog.png
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
import numpy as np

from modelrepo.names import IMAGE_INPUT, INPUT_NAME, OUTPUT_NAME, PIXELS_INPUT
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from protos.wire import MAX_MESSAGE_BYTES, add_input, output_array

DEFAULT_URL = "127.0.0.1:8001"


class InferenceServerError(RuntimeError):
    """The server answered with an error status."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


@dataclass(frozen=True)
class Classification:
    score: float  # the model's output value for the class (a logit), as Triton's classification reports it
    index: int
    label: str


def parse_classification(entry: bytes | str) -> Classification:
    """One "score:index[:label]" entry of Triton's classification extension."""
    text = entry.decode() if isinstance(entry, bytes) else entry
    score, index, *label = text.split(":", 2)
    return Classification(float(score), int(index), label[0] if label else "")


def channel_credentials(
    ca: str | os.PathLike | None = None,
    cert: str | os.PathLike | None = None,
    key: str | os.PathLike | None = None,
) -> grpc.ChannelCredentials:
    """TLS for a client: ``ca`` verifies the server (None: the system's roots); ``cert`` and ``key``
    identify the client to a server that asks (mutual TLS)."""
    if (cert is None) != (key is None):
        raise ValueError("a client certificate and its key go together")

    def read(path):
        return Path(path).read_bytes() if path is not None else None

    return grpc.ssl_channel_credentials(read(ca), read(key), read(cert))


def open_channel(
    url: str,
    *,
    credentials: grpc.ChannelCredentials | None = None,
    server_name: str | None = None,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
) -> grpc.Channel:
    """A channel to ``url``, over TLS with ``credentials`` (``server_name``: the name the server's
    certificate must carry, when it is not the host of ``url``)."""
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]
    if credentials is None:
        return grpc.insecure_channel(url, options=options)
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return grpc.secure_channel(url, credentials, options=options)


class InferenceClient:
    """Blocking client over one gRPC channel; safe to share between threads. ``credentials``
    (:func:`channel_credentials`) for TLS; ``headers`` are sent with every call (restricted protocols)."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        timeout: float | None = 60.0,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        credentials: grpc.ChannelCredentials | None = None,
        server_name: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.channel = open_channel(
            url, credentials=credentials, server_name=server_name, max_message_bytes=max_message_bytes
        )
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)
        self.metadata = tuple((k.lower(), v) for k, v in (headers or {}).items())
        self._max_batch: dict[tuple[str, str], int] = {}

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> InferenceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, request, timeout: float | None = None):
        try:
            return getattr(self.stub, method)(
                request, timeout=timeout if timeout is not None else self.timeout, metadata=self.metadata
            )
        except grpc.RpcError as e:
            raise InferenceServerError(e.code(), e.details() or "") from None

    # ------------------------------------------------------------ health / metadata

    def live(self) -> bool:
        return self._call("ServerLive", pb.ServerLiveRequest()).live

    def ready(self) -> bool:
        return self._call("ServerReady", pb.ServerReadyRequest()).ready

    def model_ready(self, model: str, version: str = "") -> bool:
        return self._call("ModelReady", pb.ModelReadyRequest(name=model, version=version)).ready

    def server_metadata(self) -> pb.ServerMetadataResponse:
        return self._call("ServerMetadata", pb.ServerMetadataRequest())

    def model_metadata(self, model: str, version: str = "") -> pb.ModelMetadataResponse:
        return self._call("ModelMetadata", pb.ModelMetadataRequest(name=model, version=version))

    def model_config(self, model: str, version: str = ""):
        return self._call("ModelConfig", pb.ModelConfigRequest(name=model, version=version)).config

    def statistics(self, model: str = "", version: str = "") -> pb.ModelStatisticsResponse:
        return self._call("ModelStatistics", pb.ModelStatisticsRequest(name=model, version=version))

    def repository_index(self, ready_only: bool = False) -> list[pb.RepositoryIndexResponse.ModelIndex]:
        return list(self._call("RepositoryIndex", pb.RepositoryIndexRequest(ready=ready_only)).models)

    def load(self, model: str) -> None:
        self._call("RepositoryModelLoad", pb.RepositoryModelLoadRequest(model_name=model))

    def unload(self, model: str) -> None:
        self._call("RepositoryModelUnload", pb.RepositoryModelUnloadRequest(model_name=model))

    # ------------------------------------------------------------------- inference

    def infer_request(
        self, request: pb.ModelInferRequest, timeout: float | None = None
    ) -> pb.ModelInferResponse:
        return self._call("ModelInfer", request, timeout)

    def _infer_tensor(self, model, name, array, version, timeout, output) -> np.ndarray:
        request = pb.ModelInferRequest(model_name=model, model_version=version)
        add_input(request, name, array)
        return output_array(self.infer_request(request, timeout), output)

    def infer(
        self,
        model: str,
        batch: np.ndarray,
        *,
        version: str = "",
        timeout: float | None = None,
        output: str = OUTPUT_NAME,
    ) -> np.ndarray:
        """Logits for an FP32 [N, C, H, W] batch (already normalized)."""
        return self._infer_tensor(model, INPUT_NAME, np.asarray(batch, np.float32), version, timeout, output)

    def infer_pixels(
        self,
        model: str,
        pixels: np.ndarray,
        *,
        version: str = "",
        timeout: float | None = None,
        output: str = OUTPUT_NAME,
    ) -> np.ndarray:
        """Logits for UINT8 [N, H, W, C] pixels at the model's input size, normalized by the server with
        the model's preprocessing (:func:`modelrepo.preprocess.to_pixels` makes them from an image)."""
        return self._infer_tensor(model, PIXELS_INPUT, np.asarray(pixels, np.uint8), version, timeout, output)

    def _batch_limit(self, model: str, version: str) -> int:
        key = (model, version)
        if key not in self._max_batch:
            self._max_batch[key] = max(1, self.model_config(model, version).max_batch_size)
        return self._max_batch[key]

    def classify(
        self,
        model: str,
        images: Sequence[bytes | str | os.PathLike],
        *,
        top_k: int = 1,
        version: str = "",
        timeout: float | None = None,
        output: str = OUTPUT_NAME,
    ) -> list[list[Classification]]:
        """Top-k classes for each encoded image (bytes or a file path), best first. The server decodes and
        preprocesses the images exactly as the model was trained; batches respect max_batch_size."""
        blobs = [Path(x).read_bytes() if isinstance(x, (str, os.PathLike)) else bytes(x) for x in images]
        limit = self._batch_limit(model, version)
        results: list[list[Classification]] = []
        for start in range(0, len(blobs), limit):
            request = pb.ModelInferRequest(model_name=model, model_version=version)
            add_input(request, IMAGE_INPUT, blobs[start : start + limit])
            request.outputs.add(name=output).parameters["classification"].int64_param = top_k
            table = output_array(self.infer_request(request, timeout), output)
            results += [[parse_classification(e) for e in row] for row in table.reshape(len(table), -1)]
        return results


# --------------------------------------------------------------------------------------------- CLI


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """TLS and header flags, shared by ``python -m service.client`` and ``python -m service.healthcheck``."""
    parser.add_argument("--tls-ca", type=Path, help="PEM CA that signed the server's certificate (TLS)")
    parser.add_argument("--tls-cert", type=Path, help="PEM client certificate (mutual TLS)")
    parser.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    parser.add_argument(
        "--tls-server-name", help="the name the server's certificate carries, if not the host"
    )
    parser.add_argument("--tls", action="store_true", help="TLS with the system's trusted CAs")
    parser.add_argument(
        "--header", action="append", default=[], metavar="KEY=VALUE", help="sent with every call (repeatable)"
    )


def connection_options(args: argparse.Namespace) -> dict:
    """InferenceClient keyword arguments from :func:`add_connection_arguments`'s flags."""
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ValueError("--tls-cert and --tls-key go together")
    headers = {}
    for item in args.header:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"--header {item!r}: expected KEY=VALUE")
        headers[key] = value
    credentials = None
    if args.tls or args.tls_ca or args.tls_cert:
        credentials = channel_credentials(args.tls_ca, args.tls_cert, args.tls_key)
    return {"credentials": credentials, "server_name": args.tls_server_name, "headers": headers}


def _classify_command(args: argparse.Namespace) -> int:
    missing = [p for p in args.images if not Path(p).is_file()]
    if missing:
        print(f"error: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    with InferenceClient(args.url, timeout=args.timeout, **args.connection) as client:
        results = client.classify(args.model, args.images, top_k=args.top_k, version=args.version)
    if args.json:
        print(
            json.dumps(
                [
                    {"image": p, "top": [asdict(c) for c in r]}
                    for p, r in zip(args.images, results, strict=True)
                ]
            )
        )
        return 0
    for path, top in zip(args.images, results, strict=True):
        best = top[0]
        print(f"{path}: {best.label or best.index} (class {best.index}, score {best.score:.4f})")
        for c in top[1:]:
            print(f"    {c.label or c.index} (class {c.index}, score {c.score:.4f})")
    return 0


def _models_command(args: argparse.Namespace) -> int:
    with InferenceClient(args.url, timeout=args.timeout, **args.connection) as client:
        for m in client.repository_index():
            print(f"{m.name}\t{m.version or '-'}\t{m.state}\t{m.reason}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.client", description="Call a cnnserve server.")
    parser.add_argument(
        "--url",
        default=os.environ.get("SERVE_URL", DEFAULT_URL),
        help=f"gRPC address host:port [SERVE_URL; {DEFAULT_URL}]",
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per call")
    add_connection_arguments(parser)
    commands = parser.add_subparsers(dest="command", required=True)
    classify = commands.add_parser("classify", help="classify image files (JPEG/PNG/...)")
    classify.add_argument("--model", required=True)
    classify.add_argument("--version", default="", help="model version (default: the latest)")
    classify.add_argument("--top-k", type=int, default=1)
    classify.add_argument("--json", action="store_true", help="print JSON instead of text")
    classify.add_argument("images", nargs="+")
    classify.set_defaults(run=_classify_command)
    models = commands.add_parser("models", help="list the repository's models and their state")
    models.set_defaults(run=_models_command)
    args = parser.parse_args(argv)
    if getattr(args, "top_k", 1) < 1:
        parser.error("--top-k must be >= 1")
    try:
        args.connection = connection_options(args)
    except (ValueError, OSError) as e:
        parser.error(str(e))
    try:
        return args.run(args)
    except InferenceServerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
