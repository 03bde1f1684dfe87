"""The CUDA side of the torch backend: global cuDNN/TF32 settings and one CUDA graph per batch bucket.

A captured graph replays every kernel of the network in one launch, so Python is not on the per-layer
path: a batch costs its copies, a few normalization kernels and one replay. Graphs read the instance's
static input buffer and write static outputs; the graphs of one instance share a memory pool (captured
largest first) and never run concurrently (one instance, one thread).
"""

from __future__ import annotations

import logging
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
