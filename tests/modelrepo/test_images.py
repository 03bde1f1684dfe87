"""Encoded images as the server decodes them: formats, the pixel cap from the header, modes, frames."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from modelrepo.preprocess import (
    DECODE_BUDGET_FACTOR,
    IMAGENET_INPUT,
    ImageDecodeError,
    InputSpec,
    decode_budget,
    decode_image,
    load_image,
    open_image,
    preprocess_bytes,
    preprocess_image,
    to_pixels,
)

GREY = InputSpec(1, 32, 32, (0.5,), (0.5,), "L")
RGB = InputSpec(3, 32, 32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "RGB")


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def png_header_only(width: int, height: int, bits: int = 8) -> bytes:
    """A PNG whose header claims width x height and whose pixel data is a few bytes (a bomb's shape)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, bits, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def test_the_pixel_count_is_refused_from_the_header_before_decoding():
    bomb = png_header_only(10_000, 10_000)
    expected = "10000x10000 = 100000000 pixels exceeds the limit of 25000000"
    with pytest.warns(Image.DecompressionBombWarning), pytest.raises(ImageDecodeError, match=expected):
        open_image(bomb, ("PNG",), max_pixels=25_000_000)
    with pytest.raises(ImageDecodeError, match="exceeds the limit of 25000000 pixels"):
        open_image(png_header_only(100_000, 100_000), ("PNG",), max_pixels=25_000_000)


def test_only_the_accepted_formats_are_opened():
    tiff = encode(Image.new("L", (8, 8)), "TIFF")
    with pytest.raises(ImageDecodeError, match="not one of JPEG, PNG"):
        preprocess_bytes(tiff, GREY, ("JPEG", "PNG"), 10**6)
    assert preprocess_bytes(tiff, GREY).shape == (1, 32, 32)  # training reads any format Pillow knows


def test_sixteen_bit_greyscale_is_scaled_not_clipped():
    wide = np.full((8, 8), 40000, dtype=np.uint16)  # 61% of full scale
    img = decode_image(encode(Image.fromarray(wide), "PNG"), GREY)
    assert img.mode == "L"
    assert np.asarray(img).max() == 40000 * 255 // 65535  # 155, not 255 (Pillow's own convert clips)


def test_palette_alpha_cmyk_and_float_images():
    palette = Image.new("P", (8, 8))
    palette.putpalette([255, 0, 0] * 256)
    palette.info["transparency"] = 0
    assert np.asarray(decode_image(encode(palette, "PNG"), RGB))[0, 0].tolist() == [255, 0, 0]
    rgba = Image.new("RGBA", (8, 8), (10, 20, 30, 0))
    assert np.asarray(decode_image(encode(rgba, "PNG"), RGB))[0, 0].tolist() == [10, 20, 30]  # alpha dropped
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # red in CMYK
    red = np.asarray(decode_image(encode(cmyk, "JPEG"), RGB))[4, 4]
    assert red[0] > 200 and red[1] < 60 and red[2] < 60
    floats = Image.fromarray(np.zeros((8, 8), dtype=np.float32))
    with pytest.raises(ImageDecodeError, match="32-bit"):
        decode_image(encode(floats, "TIFF"), GREY)


def test_animated_images_use_their_first_frame():
    frames = [Image.new("L", (8, 8), 10), Image.new("L", (8, 8), 200)]
    buf = io.BytesIO()
    frames[0].save(buf, format="PNG", save_all=True, append_images=frames[1:])
    img = decode_image(buf.getvalue(), GREY)
    assert np.asarray(img).max() == 10


def test_large_jpegs_decode_at_reduced_size_and_agree_with_a_full_decode():
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8), np.ones((32, 32, 1), dtype=np.uint8))
    data = encode(Image.fromarray(smooth), "JPEG", quality=95)  # 1280 x 1280
    reduced = load_image(open_image(data), IMAGENET_INPUT)
    assert reduced.size == (320, 320)  # 1/4: still >= the 256 the preprocessing resizes to
    with Image.open(io.BytesIO(data)) as full:
        full.load()
        reference = preprocess_image(full, IMAGENET_INPUT)
    served = preprocess_image(reduced, IMAGENET_INPUT)
    assert np.abs(served - reference).mean() < 0.05  # normalized units: a small, antialiasing difference
    small = encode(Image.new("RGB", (300, 300)), "JPEG")
    assert load_image(open_image(small), IMAGENET_INPUT).size == (300, 300)  # nothing to gain: full decode


def test_to_pixels_and_preprocess_image_are_one_path():
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    pixels = to_pixels(img, RGB)
    assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8
    expected = (pixels.astype(np.float32) / 255 - 0.5) / 0.5
    np.testing.assert_allclose(preprocess_image(img, RGB), expected.transpose(2, 0, 1), rtol=0, atol=1e-6)


def test_the_decode_budget_follows_the_model_input_and_never_passes_the_pixel_cap():
    assert decode_budget(GREY, 25_000_000) == DECODE_BUDGET_FACTOR * 32 * 32
    assert decode_budget(IMAGENET_INPUT, 25_000_000) == DECODE_BUDGET_FACTOR * 224 * 224
    assert decode_budget(IMAGENET_INPUT, 1000) == 1000


def test_an_image_past_the_budget_is_refused_from_its_header():
    header_only = png_header_only(5000, 5000, bits=16)  # its pixel data would fail to decode: refused unread
    expected = (
        "PNG image of 5000x5000 pixels exceeds the limit of 16384 pixels decoded for this model's 32x32"
    )
    with pytest.raises(ImageDecodeError, match=expected):
        decode_image(header_only, GREY, ("PNG",), 25_000_000)
    png = encode(Image.new("L", (200, 200)), "PNG")
    with pytest.raises(ImageDecodeError, match="200x200 pixels exceeds the limit of 16384"):
        preprocess_bytes(png, GREY, ("PNG",), 25_000_000)
    assert preprocess_bytes(png, IMAGENET_INPUT, ("PNG",), 25_000_000).shape == (3, 224, 224)
    assert preprocess_bytes(png, GREY).shape == (1, 32, 32)  # training: no budget


def test_jpegs_count_against_the_budget_at_their_reduced_size():
    fits = encode(Image.new("L", (1024, 1024)), "JPEG")  # decoded at 1/8: 128x128 = the budget
    assert preprocess_bytes(fits, GREY, ("JPEG",), 25_000_000).shape == (1, 32, 32)
    too_large = encode(Image.new("L", (2048, 2048)), "JPEG")
    with pytest.raises(ImageDecodeError, match=r"2048x2048 pixels \(decoded at 256x256\) exceeds the limit"):
        preprocess_bytes(too_large, GREY, ("JPEG",), 25_000_000)


def test_pixel_modes_are_checked_before_decoding():
    small16 = encode(Image.fromarray(np.full((64, 64), 65535, dtype=np.uint16)), "PNG")
    assert np.asarray(decode_image(small16, GREY, ("PNG",), 25_000_000)).max() == 255  # within budget: scaled
    floats = encode(Image.fromarray(np.zeros((8, 8), dtype=np.float32)), "TIFF")
    with pytest.raises(ImageDecodeError, match=r"TIFF image has 'F' pixels \(32-bit\)"):
        decode_image(floats, GREY, ("TIFF",), 25_000_000)
