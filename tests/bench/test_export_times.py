"""bench.export_times: stage times read from the export's own log lines, and one real (small) export."""

from __future__ import annotations

import pytest

from bench import export_times


def test_stage_lines_are_read_and_grouped():
    log = "\n".join(
        [
            "✓ load lenet5 (random weights) (0.1 s)",
            "  … calibrate and quantize int8 (entropy) 64/256 (15 s)",  # a progress line: not a stage
            "✓ calibrate and quantize int8 (entropy) (20.5 s)",
            "✓ check fp32 ONNX against PyTorch (onnxruntime CPU) (2.0 s)",
            "✓ check fp32 ONNX against PyTorch (onnxruntime CPU) (1.0 s)",
            "✓ measure fp32 latency against batch size on cpu (budget 100 ms) (4.0 s)",
            "• fp16 torch program written unchecked: not checked on this host (no CUDA)",
        ]
    )
    stages = export_times.stage_seconds(log)
    assert stages == {
        "load lenet5 (random weights)": 0.1,
        "calibrate and quantize int8 (entropy)": 20.5,
        "check fp32 ONNX against PyTorch (onnxruntime CPU)": 3.0,
        "measure fp32 latency against batch size on cpu (budget 100 ms)": 4.0,
    }
    assert [export_times.group_of(s) for s in stages] == ["export", "quantize", "check", "fit batching"]


@pytest.mark.bench
def test_one_export_is_timed_by_stage(tmp_path):
    """The real CLI in a process of its own, as the section runs it (about 15 s)."""
    result = export_times.export_one("lenet5", tmp_path, timeout_s=600)
    assert result["status"] == "ok", result["status"]
    assert result["seconds"] >= sum(result["stages"].values()) > 0
    assert set(result["groups"]) >= {"export", "check", "quantize", "fit batching"}
    assert (tmp_path / "lenet5_int8" / "1" / "probe.npz").is_file()
