"""Request payloads: random tensors shaped and typed from ModelMetadata (or the command line's --shape and
--datatype), or encoded image files as BYTES.

Payloads are encoded once, up front; the load loops send the same few requests round-robin, so the
client spends its time on the wire protocol, not on building requests.

Shapes on the command line follow perf_analyzer: without the batch dimension when the model batches
(``--batch`` rows are prepended), the full shape when it does not. A model batches when its config says
so (``max_batch_size`` > 0); without a config, when its metadata gives the input a leading -1, or, when
the metadata does not describe the input at all, by assumption (the CNNs served here all batch).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from loadtest.errors import UsageError
from loadtest.grpc_target import encode_request as encode_grpc_request
from loadtest.model_spec import InputTensor, ModelSpec, TensorSpec
from protos.wire import NUMPY_DTYPES

NUMPY_TYPES = NUMPY_DTYPES  # KServe v2 datatype -> numpy (protos.wire: the one table)
# Inclusive ranges of random integers: 8-bit types span their range (UINT8 is pixels); wider integers are
# indices or counts more often than not, so they stay small and non-negative.
INTEGER_RANGES = {"UINT8": (0, 255), "INT8": (-128, 127)}
WIDE_INTEGER_RANGE = (0, 255)
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff"})
RANDOM_REQUESTS = 4
MAX_IMAGE_REQUESTS = 64


@dataclass(frozen=True)
class InputOverrides:
    """What the command line says about inputs: --input, --shape NAME:dims, --datatype NAME:TYPE."""

    input_name: str | None = None
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    datatypes: dict[str, str] = field(default_factory=dict)

    @property
    def named(self) -> set[str]:
        return set(self.shapes) | set(self.datatypes)


@dataclass(frozen=True)
class Payloads:
    input_name: str
    datatype: str
    shape: tuple[int, ...]
    rows: int  # images per request (the client batch size)
    requests: tuple  # encoded requests (gRPC: serialized ModelInferRequest bytes), sent round-robin
    source: str


def build_payloads(
    spec: ModelSpec,
    batch: int,
    images: Path | None = None,
    input_name: str | None = None,
    seed: int = 0,
    overrides: InputOverrides | None = None,
    encode: Callable[[ModelSpec, InputTensor], object] = encode_grpc_request,
) -> Payloads:
    if images is not None:
        return image_payloads(spec, batch, images, encode)
    overrides = overrides or InputOverrides(input_name)
    return random_payloads(spec, batch, overrides, seed, encode)


def is_batched(spec: ModelSpec, batch: int, described_shape: tuple[int, ...] | None) -> bool:
    """Whether requests carry a batch dimension; raises UsageError when --batch cannot work."""
    if spec.max_batch_size == 0:
        if batch != 1:
            raise UsageError(
                f"--batch {batch}: model {spec.name!r} does not batch (max_batch_size 0); use --batch 1"
            )
        return False
    if spec.max_batch_size is not None:
        if batch > spec.max_batch_size:
            raise UsageError(
                f"--batch {batch} exceeds model {spec.name!r}'s max_batch_size {spec.max_batch_size}"
            )
        return True
    if described_shape is None:
        return True  # described nowhere: assumed to batch (see the module's docstring)
    batched = described_shape[:1] == (-1,)  # no model config: a leading -1 marks the batch dimension
    if not batched and batch != 1:
        raise UsageError(f"--batch {batch}: model {spec.name!r} has no batch dimension; use --batch 1")
    return batched


def request_shape(tensor: TensorSpec, batch: int, batched: bool) -> tuple[int, ...]:
    """The shape to send for an input as its metadata describes it."""
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
            f"give them with --shape {tensor.name}:d1,d2,..."
        )
    return tuple(1 if dim < 0 else dim for dim in shape)


def overridden_shape(
    name: str, dims: tuple[int, ...], described: tuple[int, ...] | None, batch: int, batched: bool
) -> tuple[int, ...]:
    """The shape to send for `--shape name:dims`, checked against the metadata's fixed dimensions."""
    flag = f"--shape {name}:{','.join(map(str, dims))}"
    if described is not None:
        expected = described[1:] if batched else described
        which = "without the batch dimension" if batched else "the model does not batch"
        if len(dims) != len(expected):
            raise UsageError(
                f"{flag}: the metadata gives {name!r} shape {list(described)}: expected {len(expected)} "
                f"dimensions ({which}), got {len(dims)}"
            )
        for i, (given, fixed) in enumerate(zip(dims, expected, strict=True)):
            if fixed >= 0 and given != fixed:
                raise UsageError(
                    f"{flag}: the metadata fixes dimension {i} ({which}) of {name!r} to {fixed} "
                    f"(shape {list(described)}); only -1 dimensions may be chosen"
                )
    return (batch, *dims) if batched else dims


def pick_input_name(spec: ModelSpec, overrides: InputOverrides) -> str:
    if overrides.input_name is not None:
        return overrides.input_name
    if len(overrides.named) == 1:
        return next(iter(overrides.named))
    if overrides.named:
        raise UsageError(
            f"--shape/--datatype name several inputs ({', '.join(sorted(overrides.named))}); "
            "choose the one to send with --input"
        )
    fp32 = [t for t in spec.inputs if t.datatype == "FP32"]
    if fp32:
        return next((t for t in fp32 if t.name == "input"), fp32[0]).name
    numeric = [t for t in spec.inputs if t.datatype in NUMPY_TYPES]
    if len(numeric) == 1:
        return numeric[0].name
    if not numeric:
        raise UsageError(
            f"model {spec.name!r} has no numeric input to randomize ({spec.describe_inputs()}); "
            "pass --images DIR for BYTES image inputs, or describe one with --shape NAME:d1,d2,... "
            "and --datatype NAME:TYPE"
        )
    raise UsageError(
        f"model {spec.name!r} has several inputs ({spec.describe_inputs()}); choose one with --input"
    )


def resolve_random_input(
    spec: ModelSpec, batch: int, overrides: InputOverrides
) -> tuple[str, str, tuple, bool]:
    """(name, datatype, request shape, batched) of the input to randomize."""
    name = pick_input_name(spec, overrides)
    described = next((t for t in spec.inputs if t.name == name), None)
    datatype = overrides.datatypes.get(name) or (described.datatype if described else None)
    dims = overrides.shapes.get(name)
    if described is None and (datatype is None or dims is None):
        missing = [flag for flag, given in (("--shape", dims), ("--datatype", datatype)) if given is None]
        flag = "--input" if overrides.input_name == name else "--shape" if dims else "--datatype"
        raise UsageError(
            f"{flag} {name}: model {spec.name!r} has no such input; it has {spec.describe_inputs()} (to send "
            f"an input the server does not describe, give {' and '.join(f'{m} {name}:...' for m in missing)})"
        )
    if datatype not in NUMPY_TYPES:
        raise UsageError(
            f"--input {name}: datatype {datatype} cannot be randomized; for BYTES image inputs pass "
            "--images DIR, or override it with --datatype"
        )
    described_shape = described.shape if described else None
    batched = is_batched(spec, batch, described_shape)
    if dims is not None:
        shape = overridden_shape(name, dims, described_shape, batch, batched)
    else:
        shape = request_shape(TensorSpec(name, datatype, described_shape), batch, batched)
    return name, datatype, shape, batched


def random_tensor(rng: np.random.Generator, datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    """Random values of `datatype` (little-endian, as KServe v2 raw contents are)."""
    native = np.dtype(NUMPY_TYPES[datatype])
    if native.kind == "f":
        values = rng.standard_normal(shape, dtype=np.float32)
    elif native.kind == "b":
        values = rng.integers(0, 2, shape)
    else:
        low, high = INTEGER_RANGES.get(datatype, WIDE_INTEGER_RANGE)
        values = rng.integers(low, high, shape, dtype=native, endpoint=True)
    return values.astype(native.newbyteorder("<"))


def random_input(rng: np.random.Generator, name: str, datatype: str, shape: tuple[int, ...]) -> InputTensor:
    values = random_tensor(rng, datatype, shape)
    return InputTensor(name, datatype, shape, values.tobytes(), values)


def random_payloads(spec: ModelSpec, batch: int, overrides: InputOverrides, seed: int, encode) -> Payloads:
    name, datatype, shape, batched = resolve_random_input(spec, batch, overrides)
    rng = np.random.default_rng(seed)
    requests = tuple(encode(spec, random_input(rng, name, datatype, shape)) for _ in range(RANDOM_REQUESTS))
    described = any(t.name == name for t in spec.inputs)
    source = f"random {datatype}" + ("" if described else " (input given on the command line)")
    return Payloads(name, datatype, shape, batch if batched else 1, requests, source)


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


def image_payloads(spec: ModelSpec, batch: int, folder: Path, encode) -> Payloads:
    files = list_images(folder)
    tensor = pick_image_input(spec)
    batched = is_batched(spec, batch, tensor.shape)
    shape = request_shape(tensor, batch, batched)
    per_request = math.prod(shape)
    count = max(1, min(MAX_IMAGE_REQUESTS, len(files) // per_request))
    encoded = [check_image(path) for path in files[: count * per_request]]
    requests = []
    for r in range(count):
        rows = [encoded[(r * per_request + i) % len(encoded)] for i in range(per_request)]
        raw = encode_bytes_elements(rows)
        requests.append(encode(spec, InputTensor(tensor.name, "BYTES", shape, raw)))
    rows = batch if batched else 1
    return Payloads(tensor.name, "BYTES", shape, rows, tuple(requests), f"{len(files)} images in {folder}")


def encode_bytes_elements(items: list[bytes]) -> bytes:
    """KServe v2 raw BYTES layout: each element prefixed by its 4-byte little-endian length."""
    return b"".join(struct.pack("<I", len(item)) + item for item in items)
