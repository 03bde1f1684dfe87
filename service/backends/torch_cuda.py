"""The CUDA side of the torch backend: global cuDNN/TF32 settings and one CUDA graph per batch bucket.

A captured graph replays every kernel of the network in one launch, so Python is not on the per-layer
path: a batch costs its copies, a few normalization kernels and one replay. Graphs read the instance's
static input buffer and write static outputs; the graphs of one instance share a memory pool (captured
largest first) and never run concurrently (one instance, one thread).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)

WARMUP_RUNS = 3  # eager runs per bucket before its capture: cuDNN autotuning, lazy initialization
# torch hands out streams round-robin from a pool per priority. Instances take theirs from the default
# priority's pool, image decoding from another (gpu_images.DECODE_PRIORITY): a decode call is never
# handed a stream with an instance's work queued on it.
INSTANCE_PRIORITY = 0


def instance_stream(torch: Any, device: str) -> Any:
    """The stream of one model instance: its copies, kernels and graph replays."""
    return torch.cuda.Stream(device, priority=INSTANCE_PRIORITY)


def serving_numerics(torch: Any, dtype: Any) -> dict[str, bool]:
    """The global CUDA flags a program of ``dtype`` is served with: cuDNN autotuning (each bucket has a
    fixed shape, so the fastest algorithm is found once per shape); FP32 programs compute in FP32, not
    TF32 (cuDNN's default), so that they match the validation their manifest records (the FP16 entry is
    the fast one). The export checks programs with these same flags (:func:`numerics`)."""
    flags = {"cudnn.benchmark": True}
    if dtype == torch.float32:
        flags |= {"cudnn.allow_tf32": False, "cuda.matmul.allow_tf32": False}
    return flags


def _flag_owner(torch: Any, name: str) -> tuple[Any, str]:
    path, attribute = name.rsplit(".", 1)
    owner = torch.backends
    for part in path.split("."):
        owner = getattr(owner, part)
    return owner, attribute


def configure_cuda(torch: Any, dtype: Any) -> None:
    """Set the serving numerics of ``dtype`` process-wide, the same for every torch model served."""
    for name, value in serving_numerics(torch, dtype).items():
        setattr(*_flag_owner(torch, name), value)


@contextlib.contextmanager
def numerics(torch: Any, dtype: Any) -> Iterator[None]:
    """The serving numerics of ``dtype`` while the block runs, the previous flags restored after (for a
    process that does more than serve: the export's checks of a program)."""
    saved = {name: getattr(*_flag_owner(torch, name)) for name in serving_numerics(torch, dtype)}
    configure_cuda(torch, dtype)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(*_flag_owner(torch, name), value)


class CudaGraphs:
    """``graphs(rows)`` replays the graph captured for the bucket of ``rows`` rows over ``x[:rows]`` on the
    current stream and returns its static FP32 output [rows, classes]."""

    def __init__(self, torch: Any, module: Any, x: Any, buckets: tuple[int, ...], stream: Any) -> None:
        self._graphs: dict[int, Any] = {}
        self._outputs: dict[int, Any] = {}
        pool = torch.cuda.graph_pool_handle()
        with torch.no_grad(), torch.cuda.stream(stream):
            for rows in sorted(buckets, reverse=True):
                batch = x[:rows]
                for _ in range(WARMUP_RUNS):
                    module(batch)
                stream.synchronize()
                graph = torch.cuda.CUDAGraph()
                # thread_local: other models' instances keep running their own work in other threads.
                with torch.cuda.graph(graph, pool=pool, stream=stream, capture_error_mode="thread_local"):
                    self._outputs[rows] = module(batch).float()
                self._graphs[rows] = graph
        stream.synchronize()

    def __call__(self, rows: int) -> Any:
        self._graphs[rows].replay()
        return self._outputs[rows]

    def close(self) -> None:
        for graph in self._graphs.values():
            graph.reset()
        self._graphs.clear()
        self._outputs.clear()


def release(torch: Any, device: str) -> None:
    """Wait for the device, then hand the cached blocks the closed instance left back to the driver."""
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
