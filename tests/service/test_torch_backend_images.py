"""``image`` rows decoded on the device: the decoder run with ``device="cpu"`` (torchvision's libjpeg path
in place of nvJPEG, the same resize and crop), against Pillow's path, and the data plane's hook that
hands image rows to a backend offering a decoder."""

from __future__ import annotations

import asyncio
import functools
import io

import numpy as np
import pytest
from PIL import Image

from modelrepo.preprocess import IMAGENET_INPUT, InputSpec, decode_image, to_pixels
from protos.wire import serialize_bytes
from service.backends.gpu_images import DeviceDecoder, decode_to_pixels
from service.backends.torch_backend import TorchBackend
from service.dataplane.images import ImageDecoder
from service.dataplane.plane import DataPlane, Limits
from service.dataplane.types import InferRequest, InputTensor
from service.errors import InvalidInput
from service.serving import ModelManager
from service.settings import Settings
from service.telemetry.prometheus import ServerMetrics

MAX_PIXELS = 25_000_000
SMALL = InputSpec(3, 32, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "RGB", resize=36)


def photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Smooth colour gradients with a little texture: what a JPEG of a photograph holds."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rng = np.random.default_rng(seed)
    channels = [
        128 + 100 * np.sin(x / (17 + 9 * c) + y / (23 + 5 * c) + c) + rng.normal(0, 6, (height, width))
        for c in range(3)
    ]
    return np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8)


def encode(pixels: np.ndarray, fmt: str = "JPEG", mode: str | None = None) -> bytes:
    image = Image.fromarray(pixels)
    if mode is not None:
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def pillow_pixels(data: bytes, spec: InputSpec) -> np.ndarray:
    return to_pixels(decode_image(data, spec), spec)


def decode(images, spec=IMAGENET_INPUT, max_pixels=MAX_PIXELS) -> np.ndarray:
    return decode_to_pixels(images, spec, max_pixels, device="cpu")


@pytest.mark.parametrize(("size", "mean_levels"), [((320, 240), 1.0), ((1200, 900), 2.0)])
def test_jpegs_match_pillow_within_a_level_or_two(size, mean_levels):
    """Same geometry and filter; Pillow decodes the large JPEG at half scale first (draft), so that one may
    differ a little more."""
    data = encode(photo(*size))
    got = decode([data])
    assert got.shape == (1, 224, 224, 3) and got.dtype == np.uint8
    diff = np.abs(got[0].astype(int) - pillow_pixels(data, IMAGENET_INPUT))
    assert diff.mean() <= mean_levels and np.percentile(diff, 99) <= 8


def test_grayscale_models_and_upscaling():
    spec = InputSpec(1, 32, 32, (0.5,), (0.5,), "L")
    data = encode(photo(28, 28))  # a colour JPEG for a greyscale model, smaller than its input
    got = decode([data], spec)
    assert got.shape == (1, 32, 32, 1)
    assert np.abs(got[0].astype(int) - pillow_pixels(data, spec)).mean() <= 1.5


def test_rows_nvjpeg_cannot_take_are_decoded_by_pillow_in_the_same_batch():
    pixels = photo(48, 40)
    rows = [encode(pixels), encode(pixels, "PNG"), encode(pixels, "JPEG", mode="CMYK"), encode(pixels)]
    got = decode(rows, SMALL)
    assert got.shape == (4, 32, 32, 3)
    np.testing.assert_array_equal(got[1], pillow_pixels(rows[1], SMALL))  # PNG: Pillow's own result
    np.testing.assert_array_equal(got[2], pillow_pixels(rows[2], SMALL))  # CMYK JPEG: Pillow too
    np.testing.assert_array_equal(got[0], got[3])
    assert np.abs(got[0].astype(int) - pillow_pixels(rows[0], SMALL)).mean() <= 1.5


def test_headers_are_checked_before_any_row_is_decoded():
    good = encode(photo(40, 40))
    with pytest.raises(InvalidInput, match="input 'image' element 1: cannot decode image: 5 bytes are not"):
        decode([good, b"hello"], SMALL)
    with pytest.raises(InvalidInput, match="element 0: JPEG image of 40x40 = 1600 pixels exceeds the limit"):
        decode([good], SMALL, max_pixels=1000)
    gif = io.BytesIO()
    Image.new("RGB", (8, 8)).save(gif, format="GIF")
    with pytest.raises(InvalidInput, match="element 0: cannot decode image"):
        decode([gif.getvalue()], SMALL)  # only the spec's formats (JPEG, PNG) are accepted
    truncated = good[: len(good) // 2]
    with pytest.raises(InvalidInput, match="input 'image'"):
        decode([truncated], SMALL)


def test_the_image_decoder_hands_rows_to_a_device_decoder():
    calls = []

    def device(images, spec, max_pixels):
        calls.append((len(images), spec, max_pixels))
        return np.zeros((len(images), *spec.pixels_shape), np.uint8)

    decoder = ImageDecoder(1, MAX_PIXELS)
    try:
        out = asyncio.run(decoder.decode([b"a", b"b"], SMALL, device))
        assert out.shape == (2, 32, 32, 3) and out.dtype == np.uint8
        assert calls == [(2, SMALL, MAX_PIXELS)]
        fp32 = asyncio.run(decoder.decode([encode(photo(40, 40), "PNG")], SMALL))  # no device: Pillow
        assert fp32.dtype == np.float32 and fp32.shape == (1, 3, 32, 32)
    finally:
        decoder.close()


def test_the_data_plane_decodes_on_the_backend_that_offers_it(model_repo, digit_png, monkeypatch):
    """lenet5_torch served by torch (on the CPU here): with a device decoder on offer, the ``image`` rows go
    to it and come back as pixels the backend normalizes; the answer is the Pillow path's."""
    used = []

    def offer(self):
        used.append(self.device)
        return functools.partial(decode_to_pixels, device="cpu")

    images = [encode(photo(30, 26, seed)) for seed in range(3)]
    request = InferRequest(
        "lenet5_torch", "", [InputTensor("image", "BYTES", [3], raw=serialize_bytes(images))]
    )

    async def infer_twice():
        manager = ModelManager(Settings(repo=model_repo, device="cpu"), ServerMetrics(gpu=False))
        plane = DataPlane(manager, manager.metrics, Limits(64, 1 << 30, MAX_PIXELS, 1))
        try:
            await manager.load("lenet5_torch")
            on_cpu = await plane.infer(request)
            monkeypatch.setattr(TorchBackend, "image_decoder", offer)
            on_device = await plane.infer(request)
            return on_cpu.outputs[0].data, on_device.outputs[0].data
        finally:
            plane.close()
            await manager.close(timeout=5)

    pillow, device = asyncio.run(infer_twice())
    assert used == ["cpu"]
    assert device.shape == (3, 10)
    np.testing.assert_allclose(device, pillow, atol=0.05 * np.abs(pillow).max())
    assert (device.argmax(1) == pillow.argmax(1)).all()


class _Stream:
    """A stream that logs when it is drained."""

    def __init__(self, log: list[str], handle: int = 1) -> None:
        self.log, self.cuda_stream = log, handle

    def synchronize(self) -> None:
        self.log.append("synchronize")


def test_a_device_decoder_drains_its_stream_before_nvjpeg_writes(monkeypatch):
    """pytorch/vision#9606: nvJPEG writes before work queued on the caller's stream has run, so every call
    drains the decoder's stream first (the decoder runs here with device="cpu" and a stand-in stream)."""
    import torchvision.io

    images = [encode(photo(40, 40, seed)) for seed in range(2)]
    expected = decode(images, SMALL)
    log: list[str] = []
    real = torchvision.io.decode_jpeg

    def decode_jpeg(*args, **kwargs):
        log.append("decode")
        return real(*args, **kwargs)

    monkeypatch.setattr(torchvision.io, "decode_jpeg", decode_jpeg)
    decoder = DeviceDecoder("cpu", [_Stream(log)])
    for _ in range(2):
        np.testing.assert_array_equal(decoder(images, SMALL, MAX_PIXELS), expected)
    assert log == ["synchronize", "decode"] * 2


def test_decoding_on_a_gpu_needs_a_stream_of_its_own():
    with pytest.raises(ValueError, match="needs a stream of the decoder's own"):
        decode_to_pixels([encode(photo(40, 40))], SMALL, MAX_PIXELS, device="cuda:0")


class _StreamPools:
    """torch.cuda as it hands out streams: round-robin over a pool per priority."""

    def __init__(self, size: int) -> None:
        self.size, self.handed = size, {}
        self.cuda = self

    def Stream(self, device: str, priority: int = 0) -> _Stream:
        index = self.handed.get(priority, 0)
        self.handed[priority] = index + 1
        return _Stream([], handle=(priority, index % self.size))


def test_decoding_streams_come_from_a_pool_instances_never_draw_from():
    from service.backends.gpu_images import DECODE_STREAMS, decoder_streams
    from service.backends.torch_cuda import instance_stream

    torch_cuda = _StreamPools(size=32)
    instances = {instance_stream(torch_cuda, "cuda:0").cuda_stream for _ in range(40)}
    decoding = [s.cuda_stream for s in decoder_streams(torch_cuda, "cuda:0")]
    assert len(set(decoding)) == len(decoding) == DECODE_STREAMS and instances.isdisjoint(decoding)
    assert len(decoder_streams(_StreamPools(size=2), "cuda:0")) == 2  # never the same stream twice
