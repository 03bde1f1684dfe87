"""Encoded images -> the model's FP32 input, decoded in a thread pool (never on the event loop).

A backend that decodes on its device (:meth:`service.backends.base.Backend.image_decoder`) is handed the
rows instead; it returns them as UINT8 ``pixels``, which it then normalizes on the device too."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
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

    async def decode(
        self,
        images: Sequence[bytes],
        spec: InputSpec,
        device_decoder: Callable[[Sequence[bytes], InputSpec, int], np.ndarray] | None = None,
    ) -> np.ndarray:
        """FP32 [N, C, H, W] from Pillow, or UINT8 [N, H, W, C] pixels from ``device_decoder``."""
        decode = decode_images if device_decoder is None else device_decoder
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, decode, images, spec, self.max_pixels)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
