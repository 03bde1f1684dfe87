"""The torch backend without a GPU: the same code with ``device="cpu"`` (staging, padding to buckets, pixels
normalized by torch, release on close), the bucket rules and the staging buffers' reuse. The CUDA calls
themselves (streams, graphs, pinned memory, nvJPEG) are tested in test_gpu_backends.py where a GPU exists."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from modelrepo.manifest import Manifest
from modelrepo.preprocess import normalize_pixels
from service.backends.base import BatchTooLarge
from service.backends.buckets import batch_buckets, bucket_for
from service.backends.staging import INPUT, PIXELS, HostStaging
from service.backends.torch_backend import TorchBackend, program_unusable_reason
from service.errors import ModelLoadError

RNG = np.random.default_rng(0)


def test_buckets_are_powers_of_two_preferred_sizes_and_the_maximum():
    assert batch_buckets(128) == (1, 2, 4, 8, 16, 32, 64, 128)
    assert batch_buckets(12, preferred=(6, 12, 40)) == (1, 2, 4, 6, 8, 12)
    assert batch_buckets(1) == (1,)
    with pytest.raises(ValueError, match="max_batch_size must be >= 1"):
        batch_buckets(0)


@pytest.mark.parametrize(("rows", "bucket"), [(1, 1), (3, 4), (4, 4), (5, 6), (7, 8), (9, 12), (12, 12)])
def test_a_batch_runs_in_the_smallest_bucket_that_holds_it(rows, bucket):
    assert bucket_for(rows, batch_buckets(12, preferred=(6,))) == bucket


@pytest.mark.parametrize("rows", [0, 13])
def test_rows_outside_the_buckets_are_refused(rows):
    with pytest.raises(ValueError, match=f"a batch of {rows} rows fits no bucket"):
        bucket_for(rows, batch_buckets(12))


def test_staging_buffers_are_reused_and_outputs_leave_as_copies():
    staging = HostStaging(torch, 4, (3, 2, 2), 5, pin=False)
    first = staging.load(INPUT, RNG.standard_normal((3, 3, 2, 2), dtype=np.float32))
    again = staging.load(INPUT, RNG.standard_normal((2, 3, 2, 2), dtype=np.float32))
    assert first.data_ptr() == again.data_ptr() == staging.inputs[INPUT].data_ptr()
    pixels = staging.load(PIXELS, RNG.integers(0, 256, (4, 2, 2, 3), dtype=np.uint8))
    assert pixels.dtype == torch.uint8 and pixels.data_ptr() == staging.inputs[PIXELS].data_ptr()
    staging.outputs[:2] = torch.arange(10.0).reshape(2, 5)
    out = staging.output(2)
    staging.outputs.zero_()
    assert out.tolist() == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]  # a copy: the next batch cannot change it
    assert staging.nbytes == 4 * (3 * 2 * 2 * 4 + 2 * 2 * 3 + 5 * 4)


@pytest.mark.parametrize(
    ("kind", "batch", "message"),
    [
        (INPUT, np.zeros((5, 3, 2, 2), np.float32), "at most 4"),
        (INPUT, np.zeros((1, 3, 2, 3), np.float32), "as input rows"),
        (INPUT, np.zeros((1, 3, 2, 2), np.float64), "cannot stage a float64 batch"),
        (PIXELS, np.zeros((1, 3, 2, 2), np.uint8), "as pixels rows"),
    ],
)
def test_staging_refuses_what_does_not_fit(kind, batch, message):
    with pytest.raises(ValueError, match=message):
        HostStaging(torch, 4, (3, 2, 2), 5, pin=False).load(kind, batch)


@pytest.fixture(scope="module")
def entries(lenet5_export):
    return {p: lenet5_export[p].version_dir for p in ("fp32", "fp16")}


def backend(version_dir, **options) -> TorchBackend:
    spec = Manifest.read(version_dir).input_spec
    data = (version_dir / "model.pt2").read_bytes()
    return TorchBackend(version_dir / "model.pt2", data, spec=spec, max_batch_size=16, **options)


def onnx_reference(version_dir, x):
    session = ort.InferenceSession(str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def test_fp32_program_on_cpu_matches_the_onnx_model(entries):
    instance = backend(entries["fp32"])
    x = RNG.standard_normal((5, 1, 32, 32), dtype=np.float32)
    out = instance.run(x)
    assert out.dtype == np.float32 and out.shape == (5, 10)
    np.testing.assert_allclose(out, onnx_reference(entries["fp32"], x), rtol=1e-4, atol=1e-5)
    assert instance.label == "torch" and instance.image_decoder() is None  # no device decoding on a CPU
    assert "float32" in instance.describe()


def test_fp16_program_runs_in_half_precision(entries):
    instance = backend(entries["fp16"])
    assert instance.dtype == torch.float16 and "float16" in instance.describe()
    x = RNG.standard_normal((3, 1, 32, 32), dtype=np.float32)
    reference = onnx_reference(entries["fp32"], x)
    out = instance.run(x)
    assert np.abs(out - reference).max() <= 1e-3 + 1e-2 * np.abs(reference).max()


def test_pixels_are_normalized_by_torch_as_on_the_cpu_path(entries):
    instance = backend(entries["fp32"])
    pixels = RNG.integers(0, 256, (4, 32, 32, 1), dtype=np.uint8)
    expected = instance.run(normalize_pixels(pixels, instance.spec))
    np.testing.assert_allclose(instance.run(pixels), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(instance.infer_pixels(pixels), expected, rtol=1e-5, atol=1e-6)


def test_padded_buckets_drop_the_padding_rows(entries):
    """A batch of 3 runs in bucket 4 after a batch of 8 left other rows in the buffers: the answer is the
    unpadded one, row for row."""
    padded, exact = backend(entries["fp32"], pad_to_buckets=True), backend(entries["fp32"])
    assert padded.padded and not exact.padded
    padded.run(RNG.standard_normal((8, 1, 32, 32), dtype=np.float32) * 100)
    x = RNG.standard_normal((3, 1, 32, 32), dtype=np.float32)
    np.testing.assert_allclose(padded.run(x), exact.run(x), rtol=1e-5, atol=1e-6)
    pixels = RNG.integers(0, 256, (5, 32, 32, 1), dtype=np.uint8)  # bucket 8
    np.testing.assert_allclose(padded.run(pixels), exact.run(pixels), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("pad_to_buckets", [True, False])
def test_a_batch_above_the_cap_is_refused_as_too_large(entries, pad_to_buckets):
    """Padded (as with CUDA graphs) or not, the same error, which the GPU check records as refused."""
    instance = backend(entries["fp32"], pad_to_buckets=pad_to_buckets)
    with pytest.raises(BatchTooLarge, match="a batch of 17 rows; this instance takes at most 16"):
        instance.run(np.zeros((17, 1, 32, 32), np.float32))
    assert instance.run(np.zeros((16, 1, 32, 32), np.float32)).shape == (16, 10)


def test_batches_reuse_the_staging_buffers_and_answers_do_not_alias_them(entries):
    instance = backend(entries["fp32"])
    staged = instance.staging.inputs[INPUT].data_ptr()
    x = RNG.standard_normal((2, 1, 32, 32), dtype=np.float32)
    first = instance.run(x)
    kept = first.copy()
    instance.run(RNG.standard_normal((4, 1, 32, 32), dtype=np.float32))
    assert instance.staging.inputs[INPUT].data_ptr() == staged
    np.testing.assert_array_equal(first, kept)  # the second batch did not overwrite the first answer
    readonly = np.frombuffer(x.tobytes(), dtype=np.float32).reshape(x.shape)  # as a request's raw bytes
    np.testing.assert_array_equal(instance.run(readonly), first)


def test_close_releases_the_instance(entries):
    instance = backend(entries["fp32"])
    instance.close()
    assert instance.module is None and instance.staging is None
    with pytest.raises(RuntimeError, match="closed"):
        instance.run(np.zeros((1, 1, 32, 32), np.float32))
    instance.close()  # twice is harmless


def test_broken_programs_are_load_errors(entries, tmp_path):
    with pytest.raises(ModelLoadError, match=r"torch cannot load model\.pt2 onto cpu"):
        TorchBackend(tmp_path / "model.pt2", b"not a program", input_shape=(1, 32, 32))
    spec = Manifest.read(entries["fp32"]).input_spec
    data = (entries["fp32"] / "model.pt2").read_bytes()
    with pytest.raises(ModelLoadError, match=r"torch cannot prepare model\.pt2"):  # wrong input shape
        TorchBackend(tmp_path / "model.pt2", data, input_shape=(3, 8, 8))
    with pytest.raises(RuntimeError, match="pixels need the model's preprocessing"):
        TorchBackend(tmp_path / "model.pt2", data, input_shape=spec.shape).run(
            np.zeros((1, 32, 32, 1), np.uint8)
        )


def test_programs_from_a_newer_torch_are_not_tried():
    assert program_unusable_reason(None) is None
    assert program_unusable_reason(torch.__version__) is None
    assert program_unusable_reason("2.0.1") is None  # older writers load on newer torch
    reason = program_unusable_reason("99.1.0+cu130")
    assert "written by torch 99.1.0+cu130" in reason and torch.__version__ in reason


def test_channels_last_where_the_program_takes_it(entries):
    """The layout a GPU instance uses, on the CPU: same answers; a program that views its activations
    as if contiguous falls back to the contiguous layout instead of failing."""
    channels_last, plain = backend(entries["fp32"], channels_last=True), backend(entries["fp32"])
    assert channels_last.channels_last and "channels-last" in channels_last.describe()
    weight = dict(channels_last.module.named_parameters())["features.0.weight"]
    assert weight.is_contiguous(memory_format=torch.channels_last)
    x = RNG.standard_normal((3, 1, 32, 32), dtype=np.float32)
    np.testing.assert_allclose(channels_last.run(x), plain.run(x), rtol=1e-5, atol=1e-6)

    class ViewsActivations(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 3)
            self.fc = torch.nn.Linear(4 * 30 * 30, 10)

        def forward(self, x):
            y = self.conv(x)
            return self.fc(y.view(y.shape[0], -1))

    example = torch.zeros(2, 1, 32, 32)
    program = torch.export.export(
        ViewsActivations().eval(), (example,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},)
    )
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    fallback = TorchBackend(
        Path("model.pt2"), buffer.getvalue(), input_shape=(1, 32, 32), max_batch_size=4, channels_last=True
    )
    assert not fallback.channels_last
    with torch.no_grad():
        expected = program.module()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(fallback.run(x), expected, rtol=1e-5, atol=1e-6)
