"""Encoded images -> the model's FP32 input, decoded in a thread pool (never on the event loop)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from modelrepo.names import IMAGE_INPUT
from modelrepo.preprocess import ImageDecodeError, InputSpec, preprocess_bytes
from service.errors import InvalidInput


def decode_images(images: Sequence[bytes], spec: InputSpec) -> np.ndarray:
    """Encoded images -> normalized FP32 [N, C, H, W] with the manifest's preprocessing."""
    out = np.empty((len(images), *spec.shape), dtype=np.float32)
    for i, data in enumerate(images):
        try:
            out[i] = preprocess_bytes(data, spec)
        except ImageDecodeError as e:
            raise InvalidInput(f"input {IMAGE_INPUT!r} element {i}: {e}") from None
    return out


class ImageDecoder:
    """A bounded pool of decoding threads (Pillow releases the GIL while it decodes)."""

    def __init__(self, threads: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="image-decode")

    async def decode(self, images: Sequence[bytes], spec: InputSpec) -> np.ndarray:
        return await asyncio.get_running_loop().run_in_executor(self._pool, decode_images, images, spec)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
