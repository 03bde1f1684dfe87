"""Images sent as the BYTES input `image`: every colour mode converted the way the model was trained
(never mis-scaled), formats outside the manifest's refused, size caps checked from the header before a
pixel is decoded, corrupt files refused, and BYTES bombs refused without materialising their elements.

The lossless cases compare the server's logits with those of the 8-bit greyscale picture they encode,
computed here from the same ONNX file: a 16-bit PNG that Pillow's own conversion would clip, a palette
that would come back as indices, or an alpha channel kept in, all give other logits.
"""

from __future__ import annotations

import io
import struct
import zlib

import grpc
import numpy as np
import pytest
from PIL import Image, features

from modelrepo.preprocess import InputSpec, normalize_pixels
from models.lenet import DIGITS_INPUT
from protos import grpc_service_pb2 as pb
from protos.wire import add_input
from tests.reliability.fault_kit import (
    MAX_DETAILS,
    MODEL,
    RGB_MODEL,
    RGB_SPEC,
    RawInfer,
    assert_alive_and_correct,
    logits_of,
    peak_rss_bytes,
    reset_peak_rss,
    rss_bytes,
)

INVALID = grpc.StatusCode.INVALID_ARGUMENT
SPEC: InputSpec = DIGITS_INPUT  # LeNet-5: greyscale 32x32, straight resize
GREY = np.random.default_rng(3).integers(0, 256, (32, 32), dtype=np.uint8)  # the picture every case encodes


def encode(img: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


def grey16() -> bytes:
    return encode(Image.fromarray(GREY.astype(np.uint16) * 257))  # mode I;16: 65535 is white


def palette(transparency: bool = False) -> bytes:
    img = Image.fromarray(GREY, "P")
    img.putpalette([v for i in range(256) for v in (i, i, i)])
    return encode(img, transparency=7) if transparency else encode(img)


def with_alpha(mode: str) -> bytes:
    alpha = np.random.default_rng(4).integers(0, 256, (32, 32), dtype=np.uint8)
    bands = [Image.fromarray(GREY, "L")] * (1 if mode == "LA" else 3) + [Image.fromarray(alpha, "L")]
    return encode(Image.merge(mode, bands))


def animated() -> bytes:
    first, second = Image.fromarray(GREY, "L"), Image.fromarray(255 - GREY, "L")
    return encode(first, save_all=True, append_images=[second], duration=100)


def one_bit() -> bytes:
    return encode(Image.fromarray(GREY >= 128).convert("1"))


# name -> (encoded image, the 8-bit greyscale picture it must be read as)
LOSSLESS = {
    "PNG greyscale 8-bit": (lambda: encode(Image.fromarray(GREY, "L")), lambda: GREY),
    "PNG greyscale 16-bit (scaled, not clipped)": (grey16, lambda: GREY),
    "PNG palette (colours, not indices)": (palette, lambda: GREY),
    "PNG palette with transparency": (lambda: palette(transparency=True), lambda: GREY),
    "PNG greyscale with alpha (dropped)": (lambda: with_alpha("LA"), lambda: GREY),
    "PNG RGB": (lambda: encode(Image.fromarray(GREY, "L").convert("RGB")), lambda: GREY),
    "PNG RGBA (alpha dropped)": (lambda: with_alpha("RGBA"), lambda: GREY),
    "PNG 1-bit": (one_bit, lambda: np.where(GREY >= 128, 255, 0).astype(np.uint8)),
    "animated PNG (first frame)": (animated, lambda: GREY),
    "PNG 1x1 (resized up)": (
        lambda: encode(Image.new("L", (1, 1), 200)),
        lambda: np.full((32, 32), 200, np.uint8),
    ),
}


def local_decode(data: bytes) -> np.ndarray:
    """What a plain Pillow decode makes of a lossy file: the picture the server must see too."""
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("L"), dtype=np.uint8)


LOSSY = {
    "JPEG greyscale": lambda: encode(Image.fromarray(GREY, "L"), "JPEG", quality=95),
    "JPEG RGB": lambda: encode(Image.fromarray(GREY, "L").convert("RGB"), "JPEG", quality=95),
    "JPEG CMYK": lambda: encode(
        Image.fromarray(GREY, "L").convert("RGB").convert("CMYK"), "JPEG", quality=95
    ),
    "JPEG progressive": lambda: encode(Image.fromarray(GREY, "L"), "JPEG", quality=95, progressive=True),
}


def other_format(fmt: str) -> bytes:
    return encode(Image.fromarray(GREY, "L").convert("RGB"), fmt)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_by_hand(width: int, height: int, depth: int, colour: int, rows: bytes) -> bytes:
    """A PNG of ``rows`` (filter bytes included) with the header given: for what Pillow will not write."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    body = _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(rows)) + _chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (8-bit greyscale) and whose data is one empty row:
    a bomb when the size is taken on trust."""
    return png_by_hand(width, height, 8, 0, b"\0")


def rgb48(picture: np.ndarray) -> bytes:
    """``picture`` (uint8 RGB) as a 16-bit-per-channel PNG, each value v stored as v * 257."""
    wide = (picture.astype(np.uint16) * 257).astype(">u2")
    rows = b"".join(b"\0" + wide[y].tobytes() for y in range(picture.shape[0]))
    return png_by_hand(picture.shape[1], picture.shape[0], 16, 2, rows)


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real small JPEG whose frame header (SOF0) is rewritten to claim ``width`` x ``height``."""
    data = bytearray(encode(Image.fromarray(GREY, "L"), "JPEG", quality=90))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def corrupt_crc() -> bytes:
    data = bytearray(encode(Image.fromarray(GREY, "L")))
    data[data.index(b"IDAT") + 8] ^= 0xFF  # a byte of the compressed data: its CRC no longer matches
    return bytes(data)


def zeros_png(size: int) -> bytes:
    return encode(Image.new("L", (size, size), 0))


REFUSED = {
    "GIF": (lambda: other_format("GIF"), "are not one of JPEG, PNG"),
    "BMP": (lambda: other_format("BMP"), "are not one of JPEG, PNG"),
    "TIFF": (lambda: other_format("TIFF"), "are not one of JPEG, PNG"),
    "TIFF float (32-bit)": (lambda: encode(Image.fromarray(GREY.astype(np.float32)), "TIFF"), "not one of"),
    "WebP": (lambda: other_format("WEBP"), "are not one of JPEG, PNG"),
    "random bytes": (lambda: np.random.default_rng(5).bytes(5000), "5000 bytes are not one of JPEG, PNG"),
    "PNG header of 6000x6000 (36 Mpx, cap 25 Mpx)": (
        lambda: png_header_only(6000, 6000),
        "PNG image of 6000x6000 = 36000000 pixels exceeds the limit of 25000000 pixels",
    ),
    "PNG header of 2^31-1 squared": (lambda: png_header_only(2**31 - 1, 2**31 - 1), "exceeds the limit of"),
    "PNG header of 0x0": (lambda: png_header_only(0, 0), ""),
    "JPEG header of 10000x10000 (100 Mpx)": (
        lambda: jpeg_claiming(10000, 10000),
        "JPEG image of 10000x10000 = 100000000 pixels exceeds the limit of 25000000 pixels",
    ),
    "JPEG header of 65500x65500 (past Pillow's own bomb check)": (
        lambda: jpeg_claiming(65500, 65500),
        "image exceeds the limit of 25000000 pixels",
    ),
    "PNG truncated": (lambda: encode(Image.fromarray(GREY, "L"))[:200], "cannot decode PNG image"),
    "PNG with a bad CRC": (corrupt_crc, "PNG"),
    "PNG header only, no data": (lambda: png_header_only(32, 32)[:33], "PNG"),
}


COLOUR = np.random.default_rng(6).integers(0, 256, (32, 32, 3), dtype=np.uint8)  # for the RGB model


def colour_palette() -> tuple[bytes, np.ndarray]:
    colours = np.random.default_rng(7).integers(0, 256, (256, 3), dtype=np.uint8)
    indices = np.random.default_rng(8).integers(0, 256, (32, 32), dtype=np.uint8)
    img = Image.fromarray(indices, "P")
    img.putpalette(colours.ravel().tolist())
    return encode(img), colours[indices]


def rgba() -> bytes:
    alpha = np.random.default_rng(9).integers(0, 256, (32, 32, 1), dtype=np.uint8)
    return encode(Image.fromarray(np.concatenate([COLOUR, alpha], axis=2), "RGBA"))


def grey_as_rgb() -> np.ndarray:
    return np.repeat(GREY[:, :, None], 3, axis=2)


# the RGB model: name -> (encoded image and the RGB picture it must be read as)
RGB_LOSSLESS = {
    "PNG RGB 8-bit": lambda: (encode(Image.fromarray(COLOUR, "RGB")), COLOUR),
    "PNG RGB 16-bit (scaled, not truncated)": lambda: (rgb48(COLOUR), COLOUR),
    "PNG RGBA (alpha dropped)": lambda: (rgba(), COLOUR),
    "PNG palette of 256 colours": colour_palette,
    "PNG greyscale 16-bit to RGB": lambda: (grey16(), grey_as_rgb()),
    "PNG greyscale with alpha to RGB": lambda: (with_alpha("LA"), grey_as_rgb()),
}
RGB_LOSSY = {
    "JPEG CMYK to RGB": lambda: encode(Image.fromarray(COLOUR, "RGB").convert("CMYK"), "JPEG", quality=95),
    "JPEG greyscale to RGB": lambda: encode(Image.fromarray(GREY, "L"), "JPEG", quality=95),
}


@pytest.fixture(scope="module")
def raw_infer(shared_server):
    call = RawInfer(shared_server.address)
    yield call
    call.close()


def image_request(*images: bytes) -> bytes:
    request = pb.ModelInferRequest(model_name=MODEL)
    add_input(request, "image", list(images))
    return request.SerializeToString()


def expected(reference, picture: np.ndarray) -> np.ndarray:
    return reference(normalize_pixels(picture[None, :, :, None], SPEC))


@pytest.mark.parametrize("case", LOSSLESS)
def test_lossless_modes_are_converted_not_misread(case, raw_infer, shared_server, reference):
    data, picture = LOSSLESS[case][0](), LOSSLESS[case][1]()
    code, details, response = raw_infer(image_request(data))
    assert code == grpc.StatusCode.OK, f"{case}: {code.name} {details}"
    np.testing.assert_allclose(logits_of(response), expected(reference, picture), rtol=1e-4, atol=1e-5)
    assert_alive_and_correct(shared_server, reference)


@pytest.mark.parametrize("case", LOSSY)
def test_lossy_files_decode_as_a_plain_decoder_reads_them(case, raw_infer, shared_server, reference):
    data = LOSSY[case]()
    code, details, response = raw_infer(image_request(data))
    assert code == grpc.StatusCode.OK, f"{case}: {code.name} {details}"
    picture = local_decode(data)
    assert np.abs(picture.astype(int) - GREY).max() <= 8, "the test image itself decodes far from GREY"
    np.testing.assert_allclose(logits_of(response), expected(reference, picture), rtol=1e-4, atol=1e-5)
    assert_alive_and_correct(shared_server, reference)


@pytest.mark.parametrize("case", REFUSED)
def test_refused_images(case, raw_infer, shared_server, reference):
    if case == "WebP" and not features.check("webp"):
        pytest.skip("this Pillow cannot write WebP")
    data, fragment = REFUSED[case][0](), REFUSED[case][1]
    code, details, _ = raw_infer(image_request(data))
    assert code == INVALID, f"{case}: {code.name} {details}"
    assert details.startswith("input 'image' element 0: ") and fragment in details, details
    assert len(details) <= MAX_DETAILS
    assert_alive_and_correct(shared_server, reference)


def test_a_bad_image_in_a_batch_is_named_and_fails_only_its_request(raw_infer, shared_server, reference):
    good = encode(Image.fromarray(GREY, "L"))
    code, details, _ = raw_infer(image_request(good, good, other_format("GIF"), good))
    assert code == INVALID and details.startswith("input 'image' element 2: "), details
    code, _, response = raw_infer(image_request(*[good] * 32))  # a full batch of good ones
    assert code == grpc.StatusCode.OK
    np.testing.assert_allclose(
        logits_of(response), np.repeat(expected(reference, GREY), 32, axis=0), rtol=1e-4, atol=1e-5
    )
    assert_alive_and_correct(shared_server, reference)


def test_a_large_image_under_the_cap_is_decoded(raw_infer, shared_server, reference):
    """The largest PNG the model's decode budget allows (16 times its 32x32 input: 128x128) is decoded and
    answered right; 9 Mpx of zeros, a few kB on the wire, are refused from the header (a PNG has no
    reduced-size decoding), naming the limit."""
    code, details, response = raw_infer(image_request(zeros_png(128)))
    assert code == grpc.StatusCode.OK, details
    big = zeros_png(3000)
    assert len(big) < 100_000
    refused, message, _ = raw_infer(image_request(big))
    assert refused == grpc.StatusCode.INVALID_ARGUMENT and "exceeds the limit of 16384 pixels" in message
    np.testing.assert_allclose(
        logits_of(response), expected(reference, np.zeros((32, 32), np.uint8)), rtol=1e-4, atol=1e-5
    )
    assert_alive_and_correct(shared_server, reference)


def test_typed_bytes_bomb_is_counted_before_its_elements_are_copied(raw_infer, shared_server, reference):
    """15 million two-byte BYTES elements in typed contents, for shape [1]: refused on their count. Parsing
    the 60 MB message already costs ~40 bytes per element (upb's views and arena, measured: ~0.6 GB, plus
    gRPC's buffers); a Python bytes object and a list slot per element, made before counting them, cost
    ~60 bytes more each (measured: the peak grew by 1.6 GB instead of 0.7 GB)."""
    elements = 15_000_000
    request = pb.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="image", datatype="BYTES", shape=[1]).contents.bytes_contents.extend(
        [b"ab"] * elements
    )
    data = request.SerializeToString()
    del request
    pid = shared_server.proc.pid
    reset_peak_rss(pid)
    before = rss_bytes(pid)
    code, details, _ = raw_infer(data, timeout=120)
    growth = peak_rss_bytes(pid) - before
    assert code == INVALID and f"holds {elements} BYTES elements, expected 1" in details, details
    bound = 2 * len(data) + 64 * elements  # the message twice, the parse, and room: no copy per element
    assert growth < bound, f"peak memory grew by {growth / 1e6:.0f} MB (bound {bound / 1e6:.0f} MB)"
    assert_alive_and_correct(shared_server, reference)


def rgb_request(data: bytes) -> bytes:
    request = pb.ModelInferRequest(model_name=RGB_MODEL)
    add_input(request, "image", [data])
    return request.SerializeToString()


@pytest.mark.parametrize("case", RGB_LOSSLESS)
def test_rgb_model_reads_every_mode_as_its_colours(case, raw_infer, shared_server, rgb_reference, reference):
    data, picture = RGB_LOSSLESS[case]()
    code, details, response = raw_infer(rgb_request(data))
    assert code == grpc.StatusCode.OK, f"{case}: {code.name} {details}"
    want = rgb_reference(normalize_pixels(picture[None], RGB_SPEC))
    np.testing.assert_allclose(logits_of(response), want, rtol=1e-4, atol=1e-5)
    assert_alive_and_correct(shared_server, reference)


@pytest.mark.parametrize("case", RGB_LOSSY)
def test_rgb_model_reads_lossy_files_as_a_plain_decoder(
    case, raw_infer, shared_server, rgb_reference, reference
):
    data = RGB_LOSSY[case]()
    code, details, response = raw_infer(rgb_request(data))
    assert code == grpc.StatusCode.OK, f"{case}: {code.name} {details}"
    with Image.open(io.BytesIO(data)) as img:
        picture = np.asarray(img.convert("RGB"), dtype=np.uint8)
    want = rgb_reference(normalize_pixels(picture[None], RGB_SPEC))
    np.testing.assert_allclose(logits_of(response), want, rtol=1e-4, atol=1e-5)
    assert_alive_and_correct(shared_server, reference)
