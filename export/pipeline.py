"""``export_model``: one family member -> checked ONNX FP32 / FP16 / INT8 (+ TensorRT plans) entries.

Every artifact is compared with the PyTorch FP32 model on the same inputs: random batches of several
sizes (parity) and an evaluation set (top-1 agreement and, where labels exist, accuracy). Nothing is
written to the repository unless every check passes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from export import calibration as cal
from export.entries import build_manifest, served_config, served_name
from export.errors import ExportError, ValidationError
from export.fp16 import convert_fp16
from export.int8 import CALIBRATION_METHODS, quantize_int8
from export.onnx_export import DEFAULT_OPSET, export_onnx
from export.progress import Reporter
from export.tensorrt import PlanRunner, build_plan, resolve_mode
from export.validate import (
    FP16_TOLERANCE,
    FP32_TOLERANCE,
    Parity,
    Tolerance,
    accuracy,
    compare,
    ort_session,
    parity_batch_sizes,
    parity_inputs,
    require,
    run_session,
    top1_agreement,
    torch_logits,
)
from export.writer import RepositoryWriter, check_version_free
from modelrepo.manifest import Manifest
from models import LoadedModel, get_model_entry, load_model

DEFAULT_MAX_BATCH_SIZE = 32
DEFAULT_CALIB_SAMPLES = 256
DEFAULT_MAX_INT8_DROP = 1.0  # accuracy points, checked where labels exist and weights are trained
EVAL_BATCH_SIZE = 32
ONNX_FILE, PLAN_FILE = "model.onnx", "model.plan"


@dataclass
class WrittenEntry:
    """One served model version written to the repository."""

    name: str
    precision: str
    version_dir: Path
    artifact: Path
    manifest: Manifest
    seconds: float

    @property
    def model_dir(self) -> Path:
        return self.version_dir.parent


@dataclass
class ExportResult:
    model: str
    repo: Path
    version: int
    entries: list[WrittenEntry] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __getitem__(self, precision: str) -> WrittenEntry:
        for entry in self.entries:
            if entry.precision == precision:
                return entry
        raise KeyError(f"no {precision} entry was written")


@dataclass
class _Reference:
    """PyTorch FP32 outputs every artifact is checked against."""

    parity_inputs: list[np.ndarray]
    parity_outputs: list[np.ndarray]
    eval: cal.EvalInputs
    eval_outputs: np.ndarray


@dataclass
class _Run:
    """State of one export: the staged folders, the reference, timings."""

    loaded: LoadedModel
    writer: RepositoryWriter
    reporter: Reporter
    max_batch_size: int
    reference: _Reference | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    current: str = ""

    @contextmanager
    def stage(self, description: str, total: int | None = None) -> Iterator:
        started = time.perf_counter()
        with self.reporter.stage(description, total) as advance:
            yield advance
        self.seconds[self.current] = self.seconds.get(self.current, 0.0) + time.perf_counter() - started


def _eval_source(eval_data: str, int8: bool, calib: str, weights: dict[str, Any]) -> str:
    if eval_data != "auto":
        return eval_data
    trained = (weights.get("trained") or {}).get("dataset", {}).get("name", "")
    if trained == cal.DIGITS:
        return cal.DIGITS
    if trained.startswith("folder:") and Path(trained.removeprefix("folder:")).is_dir():
        return trained.removeprefix("folder:")
    return calib if int8 else cal.RANDOM


def _check(
    run: _Run,
    precision: str,
    outputs: list[np.ndarray],
    eval_outputs: np.ndarray,
    tolerance: Tolerance | None,
    what: str,
) -> dict[str, Any]:
    """Validation record of one runtime's outputs; raises past tolerance."""
    ref = run.reference
    parity: Parity = compare(outputs, ref.parity_outputs, tolerance)
    require(parity, what)
    if not np.all(np.isfinite(eval_outputs)):
        raise ValidationError(f"{what} produced non-finite logits on {ref.eval.source}")
    return {
        "reference": "pytorch fp32",
        "parity": parity.to_dict(),
        "eval_data": ref.eval.describe(),
        "top1_agreement": top1_agreement(eval_outputs, ref.eval_outputs),
        "accuracy": accuracy(eval_outputs, ref.eval.labels),
        "reference_accuracy": accuracy(ref.eval_outputs, ref.eval.labels),
    }


def _check_onnx(run: _Run, precision: str, path: Path, tolerance: Tolerance | None) -> dict[str, Any]:
    with run.stage(f"check {precision} ONNX against PyTorch (onnxruntime CPU)"):
        session = ort_session(path)
        outs = [run_session(session, x, len(x)) for x in run.reference.parity_inputs]
        eval_out = run_session(session, run.reference.eval.inputs, EVAL_BATCH_SIZE)
        result = _check(run, precision, outs, eval_out, tolerance, f"{precision} ONNX ({path.name})")
    result["runtime"] = "onnxruntime CPUExecutionProvider"
    return result


def _plan(
    run: _Run,
    precision: str,
    source_onnx: Path,
    version_dir: Path,
    fp32_onnx: Path,
    tolerance: Tolerance | None,
) -> dict:
    """Build ``version_dir/model.plan`` from ``source_onnx`` and check it; returns the plan record."""
    plan_path = version_dir / PLAN_FILE
    with run.stage(f"build TensorRT {precision} plan (batch 1..{run.max_batch_size})"):
        info = build_plan(
            source_onnx,
            plan_path,
            precision=precision,
            spec=run.loaded.input_spec,
            max_batch_size=run.max_batch_size,
            fp32_onnx=fp32_onnx,
        )
    with run.stage(f"check TensorRT {precision} plan against PyTorch"):
        runner = PlanRunner(plan_path)
        outs = [runner(x) for x in run.reference.parity_inputs]
        eval_out = runner.run(run.reference.eval.inputs, min(EVAL_BATCH_SIZE, run.max_batch_size))
        info["validation"] = _check(run, precision, outs, eval_out, tolerance, f"TensorRT {precision} plan")
    return info


def _finish(
    run: _Run, precision: str, validation: dict, plan: dict | None = None, quantization: dict | None = None
) -> None:
    loaded = run.loaded
    name = served_name(loaded.name, precision)
    if plan is not None:  # the plan is the artifact; the ONNX model beside it is the fallback
        validation = {**plan.pop("validation"), "runtime": "tensorrt", "fallback": validation}
    vdir = run.writer.version_dir(name)
    manifest = build_manifest(
        name,
        source_model=loaded.name,
        precision=precision,
        version_dir=vdir,
        spec=loaded.input_spec,
        labels=loaded.labels,
        weights=loaded.weights,
        validation=validation,
        plan=plan,
        quantization=quantization,
    )
    config = served_config(
        name,
        source_model=loaded.name,
        precision=precision,
        fmt=manifest.format,
        spec=loaded.input_spec,
        num_classes=loaded.num_classes,
        max_batch_size=run.max_batch_size,
    )
    run.writer.finish(name, config, loaded.labels, manifest)


def export_model(
    model: str,
    *,
    weights: str = "random",
    fp16: bool = False,
    int8: bool = False,
    calib: str = cal.DIGITS,
    calib_samples: int = DEFAULT_CALIB_SAMPLES,
    calib_method: str = "entropy",
    eval_data: str = "auto",
    eval_samples: int | None = None,
    repo: str | Path = "model_repository",
    version: int = 1,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    opset: int = DEFAULT_OPSET,
    force: bool = False,
    tensorrt: str = "auto",
    max_int8_drop: float = DEFAULT_MAX_INT8_DROP,
    seed: int = 0,
    reporter: Reporter | None = None,
) -> ExportResult:
    """Export ``model`` into ``repo`` as ``<model>`` (ONNX FP32) and, on request, ``<model>_fp16`` and
    ``<model>_int8``; returns the entries written. Raises :class:`export.errors.ExportError` (and the
    registry's ``UnknownModelError`` / ``WeightsError``) with a one-line reason."""
    reporter = reporter or Reporter()
    repo = Path(repo)
    entry = get_model_entry(model)
    if max_batch_size < 1:
        raise ExportError(f"--max-batch-size must be at least 1, got {max_batch_size}")
    if calib_method not in CALIBRATION_METHODS:
        raise ExportError(
            f"--calib-method must be one of {', '.join(CALIBRATION_METHODS)}, got {calib_method!r}"
        )
    precisions = ["fp32"] + ["fp16"] * fp16 + ["int8"] * int8
    for precision in precisions:
        check_version_free(repo, served_name(entry.name, precision), version, force)
    if int8:
        cal.check_source(calib, "calibration")
    if eval_data != "auto":
        cal.check_source(eval_data, "evaluation")
    trt = resolve_mode(tensorrt, fp16 or int8)
    result = ExportResult(entry.name, repo, version)
    if trt is not None and not trt.available:
        result.notes.append(f"TensorRT plans skipped: {trt.reason}; writing the ONNX artifacts only")
        reporter.note(result.notes[-1])
    build_plans = trt is not None and trt.available

    with reporter.stage(f"load {entry.name} ({weights} weights)"):
        loaded = load_model(entry.name, weights=weights, seed=seed)
    source = _eval_source(eval_data, int8, calib, loaded.weights)
    weights_trained = loaded.weights.get("source") != "random"

    with RepositoryWriter(repo, version, force) as writer:
        run = _Run(loaded, writer, reporter, max_batch_size, current="fp32")
        spec = loaded.input_spec
        fp32_onnx = writer.version_dir(entry.name) / ONNX_FILE
        with run.stage(f"export ONNX fp32 (opset {opset}, dynamic batch)"):
            exported = export_onnx(loaded.model, spec, fp32_onnx, opset=opset, seed=seed)
        with run.stage(f"PyTorch reference on {source}"):
            xs = parity_inputs(spec.shape, parity_batch_sizes(max_batch_size), seed)
            ev = cal.evaluation_inputs(source, spec, loaded.labels, eval_samples)
            run.reference = _Reference(
                xs,
                [torch_logits(loaded.model, x, len(x)) for x in xs],
                ev,
                torch_logits(loaded.model, ev.inputs, EVAL_BATCH_SIZE),
            )
        validation = _check_onnx(run, "fp32", fp32_onnx, FP32_TOLERANCE)
        validation["onnx"] = {"opset": exported.opset, "external_data": exported.external_data}
        _finish(run, "fp32", validation)

        if fp16:
            run.current = "fp16"
            fp16_onnx = writer.version_dir(served_name(entry.name, "fp16")) / ONNX_FILE
            with run.stage("convert to ONNX fp16 (fp32 inputs/outputs kept)"):
                conversion = convert_fp16(fp32_onnx, fp16_onnx)
            validation = _check_onnx(run, "fp16", fp16_onnx, FP16_TOLERANCE)
            validation["conversion"] = conversion
            plan = None
            if build_plans:
                plan = _plan(run, "fp16", fp16_onnx, fp16_onnx.parent, fp32_onnx, FP16_TOLERANCE)
            _finish(run, "fp16", validation, plan=plan)

        if int8:
            run.current = "int8"
            int8_onnx = writer.version_dir(served_name(entry.name, "int8")) / ONNX_FILE
            with run.stage(f"read calibration images ({calib})"):
                calib_inputs, calib_source = cal.calibration_inputs(calib, spec, calib_samples, seed)
            with run.stage(
                f"calibrate and quantize int8 ({calib_method})", total=len(calib_inputs)
            ) as advance:
                quantization = quantize_int8(
                    fp32_onnx,
                    int8_onnx,
                    calib_inputs,
                    method=calib_method,
                    work_dir=writer.staging,
                    on_batch=advance,
                )
            quantization["calibration"]["source"] = calib_source
            validation = _check_onnx(run, "int8", int8_onnx, None)
            _check_int8_drop(validation, max_int8_drop if weights_trained else None)
            plan = None
            if build_plans:  # TensorRT wants symmetric activations: a second, S8S8 Q/DQ model
                symmetric = writer.staging / "int8_symmetric_qdq.onnx"
                with run.stage("calibrate symmetric int8 for TensorRT", total=len(calib_inputs)) as advance:
                    source_quantization = quantize_int8(
                        fp32_onnx,
                        symmetric,
                        calib_inputs,
                        method=calib_method,
                        activations="int8",
                        work_dir=writer.staging,
                        on_batch=advance,
                    )
                plan = _plan(run, "int8", symmetric, int8_onnx.parent, fp32_onnx, None)
                plan["source_quantization"] = source_quantization
            _finish(run, "int8", validation, plan=plan, quantization=quantization)

        with reporter.stage(
            f"write {len(precisions)} entr{'y' if len(precisions) == 1 else 'ies'} to {repo}"
        ):
            version_dirs = writer.commit()
    for precision, vdir in zip(precisions, version_dirs, strict=True):
        manifest = Manifest.read(vdir)
        result.entries.append(
            WrittenEntry(
                manifest.model,
                precision,
                vdir,
                vdir / manifest.artifact,
                manifest,
                run.seconds.get(precision, 0.0),
            )
        )
    return result


def _check_int8_drop(validation: dict[str, Any], max_drop: float | None) -> None:
    acc, ref = validation["accuracy"], validation["reference_accuracy"]
    if acc is None or ref is None:
        return
    drop = round((ref - acc) * 100, 4)
    validation["accuracy_drop_points"] = drop
    validation["max_accuracy_drop_points"] = max_drop
    if max_drop is not None and drop > max_drop:
        raise ValidationError(
            f"int8 accuracy {acc:.2%} is {drop:.2f} points below fp32's {ref:.2%} on "
            f"{validation['eval_data']['source']} (allowed {max_drop:g}); try --calib-method percentile, "
            "more --calib-samples, or --max-int8-drop"
        )
