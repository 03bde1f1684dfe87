"""Encoded images -> the model's FP32 input, decoded in a thread pool (never on the event loop)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from modelrepo.names import IMAGE_INPUT
from modelrepo.preprocess import ImageDecodeError, InputSpec, preprocess_bytes
from service.errors import InvalidInput


def decode_images(images: Sequence[bytes], spec: InputSpec, max_pixels: int) -> np.ndarray:
    """Encoded images -> normalized FP32 [N, C, H, W] with the manifest's preprocessing. Each image's
    format and pixel count are checked from its header before any pixel is decoded."""
    out = np.empty((len(images), *spec.shape), dtype=np.float32)
    for i, data in enumerate(images):
        try:
            out[i] = preprocess_bytes(data, spec, spec.image_formats, max_pixels)
        except ImageDecodeError as e:
            raise InvalidInput(f"input {IMAGE_INPUT!r} element {i}: {e}") from None
    return out


class ImageDecoder:
    """A bounded pool of decoding threads (Pillow releases the GIL while it decodes)."""

    def __init__(self, threads: int, max_pixels: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="image-decode")
        self.max_pixels = max_pixels

    async def decode(self, images: Sequence[bytes], spec: InputSpec) -> np.ndarray:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, decode_images, images, spec, self.max_pixels)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
