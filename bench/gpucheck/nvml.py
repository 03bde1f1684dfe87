"""GPU utilization sampled from NVML in a background thread while a measurement runs."""

from __future__ import annotations

import statistics
import threading
from typing import Any

PERIOD_S = 0.1


class GpuSampler:
    """``with sampler.sampling() as samples: ...``; then ``summary(samples)``. Without NVML (no
    nvidia-ml-py, no GPU) every summary is None and ``reason`` says why."""

    def __init__(self, index: int = 0) -> None:
        self.reason: str | None = None
        self._nvml: Any = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self._nvml = pynvml
        except ImportError:
            self.reason = "nvidia-ml-py is not installed"
        except Exception as e:  # pynvml.NVMLError and friends: no driver, no GPU
            self.reason = f"NVML: {e}"

    def sampling(self) -> _Sampling:
        return _Sampling(self)

    def read(self) -> float | None:
        if self._nvml is None:
            return None
        return self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu / 100.0


class _Sampling:
    def __init__(self, sampler: GpuSampler) -> None:
        self.sampler = sampler
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nvml-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(PERIOD_S):
            value = self.sampler.read()
            if value is not None:
                self.samples.append(value)

    def __enter__(self) -> _Sampling:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict | None:
        """Mean and peak utilization (0..1) over the samples, the first second's left out where there are
        more (warm-up)."""
        samples = self.samples[int(1 / PERIOD_S) :] or self.samples
        if not samples:
            return None
        return {"mean": round(statistics.fmean(samples), 3), "max": round(max(samples), 3), "n": len(samples)}
