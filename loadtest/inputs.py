"""Request payloads: random tensors shaped and typed from ModelMetadata, or encoded image files as BYTES.

Payloads are serialized once, up front; the load loops send the same few messages round-robin, so the
client spends its time on gRPC, not on building protobufs.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from loadtest.options import UsageError
from loadtest.target import ModelSpec, TensorSpec
from protos import grpc_service_pb2 as pb

NUMPY_TYPES = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff"})
RANDOM_REQUESTS = 4
MAX_IMAGE_REQUESTS = 64


@dataclass(frozen=True)
class Payloads:
    input_name: str
    datatype: str
    shape: tuple[int, ...]
    rows: int  # images per request (the client batch size)
    requests: tuple[bytes, ...]  # serialized ModelInferRequest messages, sent round-robin
    source: str


def build_payloads(
    spec: ModelSpec,
    batch: int,
    images: Path | None = None,
    input_name: str | None = None,
    seed: int = 0,
) -> Payloads:
    batched = is_batched(spec, batch)
    if images is not None:
        return image_payloads(spec, batch, batched, images)
    return random_payloads(spec, batch, batched, input_name, seed)


def is_batched(spec: ModelSpec, batch: int) -> bool:
    """Whether requests carry a batch dimension; raises UsageError when --batch cannot work."""
    if spec.max_batch_size == 0:
        if batch != 1:
            raise UsageError(
                f"--batch {batch}: model {spec.name!r} does not batch (max_batch_size 0); use --batch 1"
            )
        return False
    if spec.max_batch_size is not None and batch > spec.max_batch_size:
        raise UsageError(
            f"--batch {batch} exceeds model {spec.name!r}'s max_batch_size {spec.max_batch_size}"
        )
    if spec.max_batch_size is None:  # no ModelConfig: a leading -1 marks the batch dimension
        first_dims = {t.shape[0] for t in spec.inputs if t.shape}
        if first_dims != {-1} and batch != 1:
            raise UsageError(f"--batch {batch}: model {spec.name!r} has no batch dimension; use --batch 1")
        return first_dims == {-1}
    return True


def request_shape(tensor: TensorSpec, batch: int, batched: bool) -> tuple[int, ...]:
    shape = list(tensor.shape)
    if batched:
        if not shape or shape[0] != -1:
            raise UsageError(
                f"input {tensor.name!r} has shape {list(tensor.shape)}, expected a leading -1 batch dimension"
            )
        shape[0] = batch
    variable = [i for i, dim in enumerate(shape) if dim < 0]
    if variable and tensor.datatype != "BYTES":
        raise UsageError(
            f"input {tensor.name!r} has variable dimensions at {variable} (shape {list(tensor.shape)}); "
            "only the batch dimension may be variable"
        )
    return tuple(1 if dim < 0 else dim for dim in shape)


def pick_tensor_input(spec: ModelSpec, name: str | None) -> TensorSpec:
    if name is not None:
        for tensor in spec.inputs:
            if tensor.name == name:
                if tensor.datatype not in NUMPY_TYPES:
                    raise UsageError(
                        f"--input {name}: datatype {tensor.datatype} cannot be randomized; "
                        "for BYTES image inputs pass --images DIR"
                    )
                return tensor
        raise UsageError(
            f"--input {name}: model {spec.name!r} has no such input; it has {spec.describe_inputs()}"
        )
    fp32 = [t for t in spec.inputs if t.datatype == "FP32"]
    if fp32:
        return next((t for t in fp32 if t.name == "input"), fp32[0])
    numeric = [t for t in spec.inputs if t.datatype in NUMPY_TYPES]
    if len(numeric) == 1:
        return numeric[0]
    if not numeric:
        raise UsageError(
            f"model {spec.name!r} has no numeric input to randomize ({spec.describe_inputs()}); "
            "pass --images DIR for BYTES image inputs"
        )
    raise UsageError(
        f"model {spec.name!r} has several inputs ({spec.describe_inputs()}); choose one with --input"
    )


def random_tensor(rng: np.random.Generator, datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    dtype = np.dtype(NUMPY_TYPES[datatype])
    if dtype.kind == "f":
        return rng.standard_normal(shape, dtype=np.float32).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, shape).astype(dtype)
    return rng.integers(0, 10, shape).astype(dtype)


def random_payloads(
    spec: ModelSpec, batch: int, batched: bool, input_name: str | None, seed: int = 0
) -> Payloads:
    tensor = pick_tensor_input(spec, input_name)
    shape = request_shape(tensor, batch, batched)
    rng = np.random.default_rng(seed)
    requests = tuple(
        make_request(
            spec, tensor.name, tensor.datatype, shape, random_tensor(rng, tensor.datatype, shape).tobytes()
        )
        for _ in range(RANDOM_REQUESTS)
    )
    rows = batch if batched else 1
    return Payloads(tensor.name, tensor.datatype, shape, rows, requests, f"random {tensor.datatype}")


def list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise UsageError(f"--images {folder}: no such directory")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UsageError(f"--images {folder}: no image files (expected {', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def check_image(path: Path) -> bytes:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise UsageError(f"--images: {path} is not a readable image ({error})") from None
    return path.read_bytes()


def pick_image_input(spec: ModelSpec) -> TensorSpec:
    byte_inputs = [t for t in spec.inputs if t.datatype == "BYTES"]
    named = [t for t in byte_inputs if t.name == "image"]
    if named or len(byte_inputs) == 1:
        return (named or byte_inputs)[0]
    raise UsageError(
        f"--images: model {spec.name!r} has no BYTES input 'image' to send encoded images to "
        f"({spec.describe_inputs()})"
    )


def image_payloads(spec: ModelSpec, batch: int, batched: bool, folder: Path) -> Payloads:
    files = list_images(folder)
    tensor = pick_image_input(spec)
    shape = request_shape(tensor, batch, batched)
    per_request = math.prod(shape)
    count = max(1, min(MAX_IMAGE_REQUESTS, len(files) // per_request))
    encoded = [check_image(path) for path in files[: count * per_request]]
    requests = []
    for r in range(count):
        rows = [encoded[(r * per_request + i) % len(encoded)] for i in range(per_request)]
        requests.append(make_request(spec, tensor.name, "BYTES", shape, encode_bytes_elements(rows)))
    rows = batch if batched else 1
    return Payloads(tensor.name, "BYTES", shape, rows, tuple(requests), f"{len(files)} images in {folder}")


def encode_bytes_elements(items: list[bytes]) -> bytes:
    """KServe v2 raw BYTES layout: each element prefixed by its 4-byte little-endian length."""
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def make_request(spec: ModelSpec, name: str, datatype: str, shape: tuple[int, ...], raw: bytes) -> bytes:
    request = pb.ModelInferRequest(model_name=spec.name, model_version=spec.version, raw_input_contents=[raw])
    request.inputs.add(name=name, datatype=datatype, shape=shape)
    return request.SerializeToString()
