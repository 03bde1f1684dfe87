"""``image`` rows decoded on the GPU: JPEGs by nvJPEG through torchvision, resized and centre-cropped on the
device as :func:`modelrepo.preprocess.to_pixels` does, returned as the UINT8 ``pixels`` rows the backend
then normalizes on the device.

Decoding runs on streams of the decoder's own (one decoder per GPU, a few streams, one call per stream
at a time), drawn from a stream pool that model instances never draw from, and each stream is drained
before nvJPEG is called: nvJPEG's hardware decoder writes its outputs before work already queued on the
caller's stream has run, and torch's caching allocator may have handed it memory that work still reads
(pytorch/vision#9606).

Every image's header is checked first, as on the CPU path (format, pixel count; Pillow reads only the
header). Rows nvJPEG cannot take (PNG, CMYK JPEGs) are decoded by Pillow on the CPU in the same call.
Two differences from the CPU path, both small: Pillow may decode a large JPEG at a reduced DCT scale
before resizing (``draft``), nvJPEG decodes it whole; and nvJPEG's inverse DCT may round differently from
libjpeg-turbo's. tests/service/test_torch_backend_images.py bounds the difference.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import queue
from collections.abc import Sequence
from typing import Any

import numpy as np

from modelrepo.names import IMAGE_INPUT
from modelrepo.preprocess import (
    ImageDecodeError,
    InputSpec,
    decode_budget,
    load_image,
    open_image,
    to_pixels,
)
from service.backends.base import ImageDecoderFn
from service.errors import InvalidInput

log = logging.getLogger(__name__)

DEVICE_MODES = ("RGB", "L")  # JPEG colour modes nvJPEG decodes (CMYK and YCCK go to Pillow)
DECODE_STREAMS = 4  # decode calls at once per GPU
DECODE_PRIORITY = -1  # a pool apart from the instances' (torch_cuda.INSTANCE_PRIORITY)


@functools.cache
def _probe(device: str) -> str | None:
    """None when torchvision decodes a JPEG on ``device`` here, else why not."""
    try:
        import torch
        from PIL import Image
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError as e:
        return f"torchvision is not installed ({e})"
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 100, 50)).save(buffer, format="JPEG")
    try:
        data = torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)
        decoded = decode_jpeg([data], mode=ImageReadMode.RGB, device=device)
        decoded[0].cpu()
    except Exception as e:  # no nvJPEG in this build, a driver problem, ...
        return f"torchvision cannot decode JPEGs on {device}: {e}"
    return None


class DeviceDecoder:
    """``decoder(images, spec, max_pixels)``: :func:`decode_to_pixels` on ``device``, each call on one of
    ``streams`` that no other call holds meanwhile (a call waits for a free one)."""

    def __init__(self, device: str, streams: Sequence[Any]) -> None:
        if not streams:
            raise ValueError("a device decoder needs at least one stream")
        self.device = device
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        for stream in streams:
            self._free.put(stream)

    def __call__(self, images: Sequence[bytes], spec: InputSpec, max_pixels: int) -> np.ndarray:
        stream = self._free.get()
        try:
            return decode_to_pixels(images, spec, max_pixels, device=self.device, stream=stream)
        finally:
            self._free.put(stream)


def decoder_streams(torch: Any, device: str, count: int = DECODE_STREAMS) -> list[Any]:
    """Up to ``count`` distinct streams of the decoding pool (fewer where the pool comes round again)."""
    streams, seen = [], set()
    for _ in range(count):
        stream = torch.cuda.Stream(device, priority=DECODE_PRIORITY)
        if stream.cuda_stream in seen:
            break
        seen.add(stream.cuda_stream)
        streams.append(stream)
    return streams


@functools.cache
def _decoder(device: str) -> DeviceDecoder:
    """One per GPU for the process: its streams are drawn once, so no two decoders share one."""
    import torch

    return DeviceDecoder(device, decoder_streams(torch, device))


def device_decoder(device: str) -> ImageDecoderFn | None:
    """A decoder of ``image`` rows on ``device``, or None (logged with the reason) where there is none."""
    reason = _probe(device)
    if reason is not None:
        log.info("images are decoded on the CPU: %s", reason)
        return None
    return _decoder(device)


def resized_crop(torch: Any, image: Any, spec: InputSpec) -> Any:
    """UINT8 [C, h, w] -> UINT8 [C, H, W]: the geometry of :func:`modelrepo.preprocess.to_pixels` (shorter
    side to ``spec.resize`` then centre crop, or straight to H x W), bilinear with antialiasing as
    Pillow's BILINEAR filter."""
    _, h, w = image.shape
    if spec.resize is None:
        new_h, new_w = spec.height, spec.width
    else:
        scale = spec.resize / min(w, h)
        new_w, new_h = max(spec.width, round(w * scale)), max(spec.height, round(h * scale))
    x = image[None].float()
    if (new_h, new_w) != (h, w):
        x = torch.nn.functional.interpolate(
            x, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False
        )
    x = x.round_().clamp_(0, 255).to(torch.uint8)[0]
    left, top = (new_w - spec.width) // 2, (new_h - spec.height) // 2
    return x[:, top : top + spec.height, left : left + spec.width]


def decode_to_pixels(
    images: Sequence[bytes], spec: InputSpec, max_pixels: int, *, device: str, stream: Any = None
) -> np.ndarray:
    """Encoded images -> UINT8 [N, H, W, C] pixels at the model's input size, decoded on ``device`` (on a
    GPU on ``stream``, which this call alone may use until it returns, see :class:`DeviceDecoder`);
    raises InvalidInput naming the first row at fault (before any row is decoded, where its header is at
    fault)."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    out = np.empty((len(images), *spec.pixels_shape), dtype=np.uint8)
    budget = decode_budget(spec, max_pixels)
    on_device, on_cpu = [], []
    for i, data in enumerate(images):
        try:
            img = open_image(data, spec.image_formats, max_pixels)
        except ImageDecodeError as e:
            raise InvalidInput(f"input {IMAGE_INPUT!r} element {i}: {e}") from None
        # nvJPEG decodes at full size: a JPEG past the budget goes to Pillow, which decodes it reduced
        fits = img.size[0] * img.size[1] <= budget
        (on_device if img.format == "JPEG" and img.mode in DEVICE_MODES and fits else on_cpu).append((i, img))
    for i, img in on_cpu:
        try:
            out[i] = to_pixels(load_image(img, spec, budget), spec)
        except ImageDecodeError as e:
            raise InvalidInput(f"input {IMAGE_INPUT!r} element {i}: {e}") from None
    if not on_device:
        return out
    rows = [i for i, _ in on_device]
    encoded = [torch.frombuffer(bytearray(images[i]), dtype=torch.uint8) for i in rows]
    mode = ImageReadMode.RGB if spec.color == "RGB" else ImageReadMode.GRAY
    cuda = device.startswith("cuda")
    if cuda and stream is None:
        raise ValueError("decoding on a GPU needs a stream of the decoder's own (DeviceDecoder)")
    with torch.no_grad(), torch.cuda.stream(stream) if cuda else contextlib.nullcontext():
        if stream is not None:
            stream.synchronize()  # nothing queued on it when nvJPEG writes (pytorch/vision#9606)
        try:
            decoded = decode_jpeg(encoded, mode=mode, device=device)
        except RuntimeError as e:  # nvJPEG refuses a corrupt stream the header did not give away
            raise InvalidInput(f"input {IMAGE_INPUT!r}: cannot decode a JPEG row ({e})") from None
        pixels = torch.stack([resized_crop(torch, image, spec) for image in decoded]).permute(0, 2, 3, 1)
        out[rows] = pixels.cpu().numpy()
    return out
