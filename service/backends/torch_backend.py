"""torch: a ``torch.export`` program (``model.pt2``) on CPU or CUDA. torch is imported only here.

On CUDA an instance keeps the weights and activations in the entry's precision (the FP16 program is
FP16 throughout), in channels-last layout, with cuDNN autotuning, and runs each batch through the CUDA
graph of its padded bucket (:mod:`.torch_cuda`, :mod:`.buckets`). A batch travels once through pinned host
staging buffers sized for the largest batch (:mod:`.staging`) and non-blocking copies on the instance's
own stream; ``pixels`` are normalized on the device, and encoded JPEGs can be decoded there
(:meth:`TorchBackend.image_decoder`). The instance's thread waits for the stream (the batcher runs it
off the event loop). On the CPU the same code runs the program eagerly on the exact rows.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np

from modelrepo.preprocess import InputSpec
from service.backends.base import Backend, BatchTooLarge, ImageDecoderFn
from service.backends.buckets import batch_buckets, bucket_for
from service.backends.staging import INPUT, PIXELS, HostStaging
from service.errors import ModelLoadError

log = logging.getLogger(__name__)


def cuda_unavailable_reason() -> str | None:
    """None when torch can run on a CUDA GPU here."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        build = f"torch {torch.__version__}" + ("" if torch.version.cuda else ", a CPU-only build")
        return f"torch sees no CUDA GPU ({build})"
    return None


def cuda_available() -> bool:
    return cuda_unavailable_reason() is None


def _minor_version(version: str) -> tuple[int, ...]:
    digits = []
    for part in version.split("+")[0].split(".")[:2]:
        if not part.isdigit():
            break
        digits.append(int(part))
    return tuple(digits)


def program_unusable_reason(written_by: str | None) -> str | None:
    """None when this torch can load a program written by torch ``written_by`` (None: unknown, try)."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if written_by and _minor_version(written_by) > _minor_version(torch.__version__):
        return (
            f"it was written by torch {written_by}, this is torch {torch.__version__} (a torch.export "
            "program loads on the torch that wrote it or a newer one)"
        )
    return None


class TorchBackend(Backend):
    kind = "torch"

    def __init__(
        self,
        path: Path,
        data: bytes,
        *,
        device: str = "cpu",
        spec: InputSpec | None = None,
        input_shape: tuple[int, int, int] | None = None,
        max_batch_size: int = 1,
        preferred_batch_sizes: tuple[int, ...] = (),
        cuda_graphs: bool = True,
        channels_last: bool | None = None,
        pad_to_buckets: bool | None = None,
    ) -> None:
        try:
            import torch
        except ImportError:
            raise ModelLoadError(f"{path} needs torch, which is not installed") from None
        self._torch = torch
        self.device = device
        self.spec = spec
        self.cuda = device.startswith("cuda")
        shape = input_shape or (spec.shape if spec is not None else None)
        if shape is None:
            raise ModelLoadError(f"{path}: the torch backend needs the model's input shape")
        try:
            module = torch.export.load(io.BytesIO(data)).module()
            module.to(device)
        except Exception as e:  # torch raises many types for corrupt or incompatible programs
            raise ModelLoadError(f"torch cannot load {path.name} onto {device}: {e}") from None
        floats = [p.dtype for p in module.parameters() if p.is_floating_point()]
        self.dtype = floats[0] if floats else torch.float32
        self.channels_last = self.cuda if channels_last is None else channels_last
        self.module = module
        self.buckets = batch_buckets(max_batch_size, preferred_batch_sizes)
        self.padded = (cuda_graphs and self.cuda) if pad_to_buckets is None else pad_to_buckets
        self.stream = None
        if self.cuda:
            from service.backends.torch_cuda import instance_stream

            self.stream = instance_stream(torch, device)
        self._done = torch.cuda.Event(blocking=True) if self.cuda else None  # the wait sleeps, no spin
        self._graphs = None
        self._x = self._device_in = self._mean = self._std = self.staging = None
        self._decoder: ImageDecoderFn | None = None
        self._decoder_probed = False
        try:
            self._allocate(tuple(shape), max_batch_size)
            if self.cuda and cuda_graphs:
                from service.backends.torch_cuda import CudaGraphs

                self._graphs = CudaGraphs(torch, module, self._x, self.buckets, self.stream)
        except Exception as e:
            self.close()
            raise ModelLoadError(f"torch cannot prepare {path.name} on {device}: {e}") from None

    def _allocate(self, shape: tuple[int, int, int], max_rows: int) -> None:
        """The device buffers (the network's input in its dtype and layout, and where on a GPU the staged
        rows land) and the host staging buffers, for ``max_rows`` rows."""
        torch = self._torch
        if self.cuda:
            from modelrepo.torch_numerics import configure_cuda

            configure_cuda(torch, self.dtype)
        with torch.no_grad(), self._on_stream():
            classes = self._set_layout(torch.zeros((max_rows, *shape), dtype=self.dtype, device=self.device))
            if self.spec is not None:
                view = (1, -1, 1, 1)
                self._mean = torch.tensor(self.spec.mean, dtype=torch.float32, device=self.device).view(view)
                self._std = torch.tensor(self.spec.std, dtype=torch.float32, device=self.device).view(view)
        self.staging = HostStaging(torch, max_rows, shape, classes, pin=self.cuda)
        if self.cuda:
            self._device_in = {
                kind: torch.empty_like(host, device=self.device) for kind, host in self.staging.inputs.items()
            }
        if self._done is not None:
            self.stream.synchronize()

    def _set_layout(self, x: Any) -> int:
        """Weights and the input buffer ``x`` channels-last where asked and where the program takes it (a
        view over a channels-last activation would fail); returns the number of classes."""
        torch = self._torch
        if self.channels_last:
            self.module.to(memory_format=torch.channels_last)
            self._x = x.contiguous(memory_format=torch.channels_last)
            try:
                return int(self.module(self._x[:1]).shape[-1])
            except RuntimeError as e:
                log.info("channels-last layout off for this program: %s", str(e).splitlines()[0])
                self.channels_last = False
                self.module.to(memory_format=torch.contiguous_format)
        self._x = x.contiguous()
        return int(self.module(self._x[:1]).shape[-1])

    def _on_stream(self) -> contextlib.AbstractContextManager:
        return self._torch.cuda.stream(self.stream) if self.cuda else contextlib.nullcontext()

    # ------------------------------------------------------------------ running

    def run(self, batch: np.ndarray) -> np.ndarray:
        """FP32 [N, C, H, W] or UINT8 [N, H, W, C] -> FP32 [N, classes]; one batch at a time per instance."""
        torch = self._torch
        if self.module is None:
            raise RuntimeError("this torch instance is closed (its model was unloaded)")
        kind = PIXELS if batch.dtype == np.uint8 else INPUT
        if kind == PIXELS and self.spec is None:
            raise RuntimeError("pixels need the model's preprocessing, which this instance was not given")
        rows = len(batch)
        if rows > self.buckets[-1]:
            raise BatchTooLarge(f"a batch of {rows} rows; this instance takes at most {self.buckets[-1]}")
        padded = bucket_for(rows, self.buckets) if self.padded else rows
        staged = self.staging.load(kind, batch)
        with torch.no_grad(), self._on_stream():
            if self.cuda:
                staged = self._device_in[kind][:rows].copy_(staged, non_blocking=True)
            self._fill_input(kind, staged, rows)
            out = self._graphs(padded) if self._graphs is not None else self.module(self._x[:padded]).float()
            self.staging.outputs[:rows].copy_(out[:rows], non_blocking=self.cuda)
            if self._done is not None:
                self._done.record(self.stream)
        if self._done is not None:
            self._done.synchronize()  # releases the GIL; the batcher calls run() in the instance's thread
        return self.staging.output(rows)

    def _fill_input(self, kind: str, staged: Any, rows: int) -> None:
        """The network's input rows from the staged ones: a cast (and layout change) for ``input``;
        ``pixels`` scaled to [0, 1] and normalized in FP32 as modelrepo.preprocess.normalize_pixels does,
        then cast."""
        if kind == INPUT:
            self._x[:rows].copy_(staged)
            return
        scaled = staged.permute(0, 3, 1, 2).float().div_(255.0)
        self._x[:rows].copy_(scaled.sub_(self._mean).div_(self._std))

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.run(np.asarray(batch, dtype=np.float32))

    def infer_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return self.run(np.asarray(pixels, dtype=np.uint8))

    def image_decoder(self) -> ImageDecoderFn | None:
        """JPEG rows decoded by nvJPEG on this instance's GPU (torchvision), where torchvision can."""
        if not self.cuda or self.spec is None:
            return None
        if not self._decoder_probed:
            from service.backends.gpu_images import device_decoder

            self._decoder, self._decoder_probed = device_decoder(self.device), True
        return self._decoder

    # -------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Drop the graphs, the weights and every buffer; on a GPU hand the memory back to the driver."""
        if self._graphs is not None:
            self._graphs.close()
        self._graphs = None
        self.module = None
        self._x = self._device_in = self._mean = self._std = None
        self.staging = None
        if self.cuda:
            from service.backends.torch_cuda import release

            release(self._torch, self.device)

    def describe(self) -> str:
        graphs = f"CUDA graphs for batch {','.join(map(str, self.buckets))}" if self._graphs else "eager"
        layout = ", channels-last" if self.channels_last else ""
        return f"torch on {self.device} ({str(self.dtype).removeprefix('torch.')}{layout}, {graphs})"
