"""``export_model``: one family member -> checked entries: ONNX FP32 / FP16 / INT8, torch.export programs
(FP32, FP16), TensorRT plans where TensorRT and a GPU exist.

Every artifact is compared with the PyTorch FP32 model on the same inputs: random batches of several
sizes (parity) and an evaluation set (top-1 agreement and, where labels exist, accuracy). Nothing is
written to the repository unless every check passes. Each precision is one stage: convert from the
FP32 ONNX model, check, write the torch program and check it, optionally build a TensorRT plan, write
the entry. The primary artifact (what config.pbtxt names) is the plan where one was built, else the ONNX
model; the others are the manifest's alternatives.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from export import calibration as cal
from export.checks import EVAL_BATCH_SIZE, Reference, check_int8_drop, check_outputs, eval_source
from export.errors import ExportError, ValidationError, VersionExistsError
from export.fp16 import convert_fp16, convert_qdq_fp16
from export.int8 import quantize_int8
from export.int8_reference import TOLERANCE_STEPS, check_against_reference
from export.onnx_export import export_onnx
from export.options import ExportOptions
from export.progress import Reporter
from export.tensorrt import PlanRunner, build_plan, resolve_mode, strongly_typed
from export.torch_program import NO_INT8_PROGRAM, ProgramRunner, export_program, validation_device
from export.validate import (
    FP16_TOLERANCE,
    FP32_TOLERANCE,
    Tolerance,
    cpu_count,
    ort_session,
    parity_batch_sizes,
    parity_inputs,
    run_session,
    torch_logits,
)
from export.versions import tool_versions
from modelrepo import probe as probes
from modelrepo import writer as repo_writer
from modelrepo.batching import Fit, fit, measure_curve
from modelrepo.entries import artifact_record, entry_config, entry_manifest, served_name
from modelrepo.manifest import Artifact, Manifest
from modelrepo.names import artifact_file
from modelrepo.writer import RepositoryWriteError, RepositoryWriter, check_version_free
from models import LoadedModel, get_model_entry, load_model

ONNX_FILE, PLAN_FILE = artifact_file("onnx"), artifact_file("tensorrt_plan")
PROGRAM_FILE = artifact_file("torch_export")
PROBE_SAMPLES, PROBE_SAMPLES_LARGE = 4, 2  # evaluation inputs in probe.npz (LeNet-5's; 224x224 models')
PYTORCH_REFERENCE = "pytorch fp32"
FP16_PROGRAM_UNCHECKED = (
    "not checked on this host (no CUDA): torch's fp16 kernels on a CPU are not a path the server serves; "
    "the server checks it against probe.npz at its first load on a GPU"
)


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
class _Run:
    """State of one export: the options, the staged folders, the reference, timings."""

    options: ExportOptions
    loaded: LoadedModel
    writer: RepositoryWriter
    reporter: Reporter
    build_plans: bool
    reference: Reference | None = None
    calib_inputs: np.ndarray | None = None
    calib_source: str = ""
    seconds: dict[str, float] = field(default_factory=dict)
    current: str = ""
    probe: _Probe | None = None

    @contextmanager
    def stage(self, description: str, total: int | None = None) -> Iterator:
        started = time.perf_counter()
        with self.reporter.stage(description, total) as advance:
            yield advance
        self.seconds[self.current] = self.seconds.get(self.current, 0.0) + time.perf_counter() - started

    def version_dir(self, precision: str) -> Path:
        return self.writer.version_dir(served_name(self.loaded.name, precision))

    def onnx_path(self, precision: str) -> Path:
        return self.version_dir(precision) / ONNX_FILE


@dataclass
class _Probe:
    """The numerics probe of this export (:mod:`modelrepo.probe`): a few evaluation inputs, PyTorch's FP32
    outputs on them, and each version folder's expected outputs, file by file, until its entry is written."""

    inputs: np.ndarray
    torch_outputs: np.ndarray
    source: str
    expected: dict[str, dict[str, tuple[np.ndarray, probes.Tolerance, str, str]]] = field(
        default_factory=dict
    )

    def expect(
        self,
        precision: str,
        file: str,
        outputs: np.ndarray,
        tolerance: probes.Tolerance,
        reference: str,
        why: str,
    ) -> None:
        self.expected.setdefault(precision, {})[file] = (outputs, tolerance, reference, why)

    def check(self, what: str, outputs: np.ndarray, tolerance: probes.Tolerance) -> dict[str, Any]:
        """The artifact's outputs on the probe inputs, as the server will check them at load."""
        agreement = probes.agreement(outputs, self.torch_outputs, tolerance)
        if not agreement.passed:
            raise ValidationError(
                f"{what} disagrees with PyTorch on the probe inputs ({self.source}): max abs error "
                f"{agreement.max_abs_error:.4g} (allowed {agreement.allowed:.4g})"
            )
        return {"max_abs_error": agreement.max_abs_error, "allowed": agreement.allowed}


def _probe_inputs(inputs: np.ndarray) -> np.ndarray:
    """A few evaluation inputs, fewer of a large image, rounded as probe.npz keeps them (FP16, half the
    bytes): every expected output is computed from the rounded values."""
    count = PROBE_SAMPLES if inputs[0].size <= 64 * 64 * 3 else PROBE_SAMPLES_LARGE
    return probes.rounded(inputs[:count])


def _tolerance(tolerance: Tolerance) -> probes.Tolerance:
    return probes.Tolerance(tolerance.atol, tolerance.rtol)


@dataclass(frozen=True)
class _Conversion:
    """What a precision's conversion from the FP32 ONNX model recorded."""

    validation: dict[str, Any] = field(default_factory=dict)  # merged into the validation record
    quantization: dict[str, Any] | None = None  # the manifest's quantization record


@dataclass(frozen=True)
class _Precision:
    """How one precision is made: convert the FP32 ONNX model, the tolerance of its check, the ONNX model a
    TensorRT plan is built from."""

    name: str
    tolerance: Tolerance | None
    convert: Callable[[_Run, Path], _Conversion]
    plan_source: Callable[[_Run, Path], tuple[Path, dict[str, Any]]]


# ------------------------------------------------------------------------------------------- checks


def _check_onnx(
    run: _Run, precision: str, path: Path, tolerance: Tolerance | None
) -> tuple[dict[str, Any], ort.InferenceSession]:
    """The validation record of the ONNX model at ``path``, and the session that computed it."""
    parity, evaluation = run.reference.parity_inputs, run.reference.eval.inputs
    batches = range(0, len(evaluation), EVAL_BATCH_SIZE)
    with run.stage(
        f"check {precision} ONNX against PyTorch (onnxruntime CPU)", total=len(parity) + len(batches)
    ) as advance:
        session = ort_session(path)
        outs = []
        for x in parity:
            outs.append(run_session(session, x, len(x)))
            advance(1)
        eval_outs = []
        for i in batches:
            eval_outs.append(run_session(session, evaluation[i : i + EVAL_BATCH_SIZE], EVAL_BATCH_SIZE))
            advance(1)
        eval_out = np.concatenate(eval_outs)
        result = check_outputs(run.reference, outs, eval_out, tolerance, f"{precision} ONNX ({path.name})")
    result["runtime"] = "onnxruntime CPUExecutionProvider"
    return result, session


def _probe_onnx(
    run: _Run, precision: str, path: Path, session: ort.InferenceSession, tolerance: Tolerance | None
) -> dict[str, Any]:
    """Run the served ONNX model on the probe inputs and record what the server must see at load: PyTorch's
    outputs within the precision's tolerance, or for int8 the exact evaluation of its Q/DQ graph (checked
    here, where onnxruntime's int8 kernels may compute otherwise)."""
    probe = run.probe
    outputs = run_session(session, probe.inputs, len(probe.inputs))
    if tolerance is not None:
        record = probe.check(f"{precision} ONNX ({path.name})", outputs, _tolerance(tolerance))
        probe.expect(
            precision, path.name, probe.torch_outputs, _tolerance(tolerance), PYTORCH_REFERENCE,
            f"the {precision} parity tolerance of the export",
        )  # fmt: skip
        return {"probe_check": record}
    with run.stage(
        f"check int8 ONNX against the exact Q/DQ evaluation ({len(probe.inputs)} inputs)",
        total=len(probe.inputs),
    ) as advance:
        check, exact = check_against_reference(path, probe.inputs, outputs, advance)
    probe.expect(
        precision, path.name, exact, probes.Tolerance(check.tolerance, 0.0), check.evaluator,
        f"{TOLERANCE_STEPS:g} output quantization steps of {check.output_step:.4g}: requantization rounding",
    )  # fmt: skip
    return {"reference_check": check.record()}


def _torch_program(run: _Run, precision: str, tolerance: Tolerance) -> Artifact:
    """Write ``model.pt2`` of ``precision`` beside the ONNX model and check it against PyTorch on the device
    class that serves it. An FP16 program on a host without CUDA is written unchecked: torch's FP16
    convolutions on a CPU are slow (VGG-19's check ran over 16 minutes) and no server runs them there; the
    server checks it with the probe at its first load on a GPU."""
    path = run.version_dir(precision) / PROGRAM_FILE
    with run.stage(f"export torch.export {precision} program"):
        extra = export_program(run.loaded.model, run.loaded.input_spec, path, precision=precision)
    device = validation_device()
    run.probe.expect(
        precision, path.name, run.probe.torch_outputs, _tolerance(tolerance), PYTORCH_REFERENCE,
        f"the {precision} parity tolerance of the export",
    )  # fmt: skip
    if precision == "fp16" and device == "cpu":
        validation = {"checked": False, "reason": FP16_PROGRAM_UNCHECKED}
        run.reporter.note(f"{precision} torch program written unchecked: {FP16_PROGRAM_UNCHECKED}")
        return artifact_record(path.parent, "torch_export", precision, validation, extra)
    batches = len(run.reference.parity_inputs) + -(-len(run.reference.eval.inputs) // EVAL_BATCH_SIZE) + 1
    with run.stage(
        f"check {precision} torch program against PyTorch (torch on {device})", total=batches
    ) as advance:
        runner = ProgramRunner(path, device)
        try:
            outs = []
            for x in run.reference.parity_inputs:
                outs.append(runner(x))
                advance(1)
            eval_out = runner.run(run.reference.eval.inputs, EVAL_BATCH_SIZE, advance)
            probe_out = runner(run.probe.inputs)
            advance(1)
        finally:
            runner.close()
        validation = check_outputs(
            run.reference, outs, eval_out, tolerance, f"{precision} torch program ({path.name})"
        )
        validation["probe_check"] = run.probe.check(
            f"{precision} torch program ({path.name})", probe_out, _tolerance(tolerance)
        )
    validation["runtime"] = f"torch {extra['torch']} on {device}"
    return artifact_record(path.parent, "torch_export", precision, validation, extra)


# -------------------------------------------------------------------------------------- precisions


def _fp16(run: _Run, out: Path) -> _Conversion:
    with run.stage("convert to ONNX fp16 (fp32 inputs/outputs kept)"):
        return _Conversion(validation={"conversion": convert_fp16(run.onnx_path("fp32"), out)})


def _calibration_inputs(run: _Run) -> np.ndarray:
    if run.calib_inputs is None:
        options = run.options
        with run.stage(f"read calibration images ({options.calib})"):
            run.calib_inputs, source = cal.calibration_inputs(
                options.calib, run.loaded.input_spec, options.calib_samples, options.seed
            )
        run.calib_source = source
    return run.calib_inputs


def _quantize(run: _Run, out: Path, description: str, activations: str) -> dict[str, Any]:
    inputs = _calibration_inputs(run)
    method = run.options.calib_method
    with run.stage(f"{description} ({method})", total=len(inputs)) as advance:
        record = quantize_int8(
            run.onnx_path("fp32"),
            out,
            inputs,
            method=method,
            activations=activations,
            work_dir=run.writer.staging,
            on_batch=advance,
        )
    record["calibration"]["source"] = run.calib_source
    return record


def _int8(run: _Run, out: Path) -> _Conversion:
    return _Conversion(quantization=_quantize(run, out, "calibrate and quantize int8", "uint8"))


def _int8_plan_source(run: _Run, onnx: Path) -> tuple[Path, dict[str, Any]]:
    """TensorRT wants symmetric activations: a second, S8S8 Q/DQ model. A strongly typed build takes
    every layer's type from the model, so there its float parts become FP16 first (checked against
    PyTorch on onnxruntime's CPU kernels like the served int8 model)."""
    symmetric = run.writer.staging / "int8_symmetric_qdq.onnx"
    record = {
        "source_quantization": _quantize(run, symmetric, "calibrate symmetric int8 for TensorRT", "int8")
    }
    if not strongly_typed():
        return symmetric, record
    source = run.writer.staging / "int8_symmetric_qdq_fp16.onnx"
    with run.stage("convert the symmetric int8 model's float layers to fp16"):
        record["source_conversion"] = convert_qdq_fp16(symmetric, source)
    record["source_validation"] = _check_onnx(run, "int8 (fp16 float layers)", source, None)[0]
    return source, record


PRECISIONS = {
    "fp16": _Precision("fp16", FP16_TOLERANCE, _fp16, lambda run, onnx: (onnx, {})),
    "int8": _Precision("int8", None, _int8, _int8_plan_source),
}


def _plan(run: _Run, precision: _Precision, onnx: Path) -> dict[str, Any]:
    """Build ``model.plan`` beside ``onnx`` and check it; returns the plan record."""
    source, extra = precision.plan_source(run, onnx)
    plan_path = onnx.parent / PLAN_FILE
    max_batch = run.options.max_batch_size
    with run.stage(f"build TensorRT {precision.name} plan (batch 1..{max_batch})"):
        info = build_plan(
            source,
            plan_path,
            precision=precision.name,
            spec=run.loaded.input_spec,
            max_batch_size=max_batch,
            fp32_onnx=run.onnx_path("fp32"),
        )
    with run.stage(f"check TensorRT {precision.name} plan against PyTorch"):
        runner = PlanRunner(plan_path)
        outs = [runner(x) for x in run.reference.parity_inputs]
        eval_out = runner.run(run.reference.eval.inputs, min(EVAL_BATCH_SIZE, max_batch))
        info["validation"] = check_outputs(
            run.reference, outs, eval_out, precision.tolerance, f"TensorRT {precision.name} plan"
        )
        if precision.tolerance is not None:  # an int8 plan's own check is its accuracy above
            tolerance = _tolerance(precision.tolerance)
            what = f"TensorRT {precision.name} plan"
            outputs = runner.run(run.probe.inputs, min(len(run.probe.inputs), max_batch))
            info["validation"]["probe_check"] = run.probe.check(what, outputs, tolerance)
            run.probe.expect(
                precision.name, PLAN_FILE, run.probe.torch_outputs, tolerance, PYTORCH_REFERENCE,
                f"the {precision.name} parity tolerance of the export",
            )  # fmt: skip
    return {**info, **extra}


def _export_precision(run: _Run, precision: _Precision) -> None:
    """Convert, check, optionally build a plan, and stage the entry of one reduced precision."""
    run.current = precision.name
    onnx = run.onnx_path(precision.name)
    conversion = precision.convert(run, onnx)
    checked, session = _check_onnx(run, precision.name, onnx, precision.tolerance)
    validation = {**checked, **conversion.validation}
    validation.update(_probe_onnx(run, precision.name, onnx, session, precision.tolerance))
    if precision.name == "int8":
        weights_trained = run.loaded.weights.get("source") != "random"
        check_int8_drop(validation, run.options.max_int8_drop if weights_trained else None)
    programs, notes = [], []
    if precision.tolerance is None:  # int8
        notes.append(NO_INT8_PROGRAM)
    elif run.options.torch:
        programs.append(_torch_program(run, precision.name, precision.tolerance))
    plan = _plan(run, precision, onnx) if run.build_plans else None
    _finish(
        run,
        precision.name,
        validation,
        plan=plan,
        quantization=conversion.quantization,
        programs=programs,
        notes=notes,
    )


def _export_fp32(run: _Run) -> None:
    run.current = "fp32"
    options, loaded = run.options, run.loaded
    spec = loaded.input_spec
    path = run.onnx_path("fp32")
    with run.stage(f"export ONNX fp32 (opset {options.opset}, dynamic batch)"):
        exported = export_onnx(loaded.model, spec, path, opset=options.opset, seed=options.seed)
    source = eval_source(options, loaded.weights)
    with run.stage(f"PyTorch reference on {source}"):
        xs = parity_inputs(spec.shape, parity_batch_sizes(options.max_batch_size), options.seed)
        ev = cal.evaluation_inputs(source, spec, loaded.labels, options.eval_samples)
        run.reference = Reference(
            xs,
            [torch_logits(loaded.model, x, len(x)) for x in xs],
            ev,
            torch_logits(loaded.model, ev.inputs, EVAL_BATCH_SIZE),
        )
        inputs = _probe_inputs(ev.inputs)
        run.probe = _Probe(inputs, torch_logits(loaded.model, inputs, len(inputs)), ev.source)
    validation, session = _check_onnx(run, "fp32", path, FP32_TOLERANCE)
    validation.update(_probe_onnx(run, "fp32", path, session, FP32_TOLERANCE))
    validation["onnx"] = {"opset": exported.opset, "external_data": exported.external_data}
    programs = [_torch_program(run, "fp32", FP32_TOLERANCE)] if options.torch else []
    _finish(run, "fp32", validation, programs=programs)


def _fit_batching(run: _Run, precision: str, plan: dict | None) -> Fit:
    """The batching of the entry, fitted to latencies measured on this machine on the device and runtime
    that serve it here: the TensorRT plan where one was built, else the torch program on CUDA where torch
    sees a GPU (what a GPU host without TensorRT or onnxruntime-gpu serves), else onnxruntime on the CPU.
    The record says which, and keeps the model's limit (``--max-batch-size``): a CPU's fit caps batches
    where a GPU would take many more, so the serving host's ``--tune`` may raise the cap up to it."""
    options, spec = run.options, run.loaded.input_spec
    onnx = run.onnx_path(precision)
    program = onnx.parent / PROGRAM_FILE
    budget_s = options.latency_budget_ms / 1e3
    if plan is not None:
        runner, device, runtime = PlanRunner(onnx.parent / PLAN_FILE), "cuda", "tensorrt"
    elif program.is_file() and validation_device() == "cuda":
        runner = ProgramRunner(program, "cuda")
        device, runtime = "cuda", "torch (the torch.export program, eager)"
    else:
        session = ort_session(onnx, threads=cpu_count())
        device, runtime = "cpu", "onnxruntime CPUExecutionProvider"

        def runner(x: np.ndarray) -> np.ndarray:
            return run_session(session, x, len(x))

    described = f"{precision} latency against batch size on {device}, {runtime}"
    try:
        with run.stage(f"measure {described} (budget {options.latency_budget_ms:g} ms)"):
            curve = measure_curve(runner, spec.shape, options.max_batch_size, budget_s)
    finally:
        if isinstance(runner, ProgramRunner):
            runner.close()
    return fit(curve, options.max_batch_size, options.latency_budget_ms, device=device, runtime=runtime)


def _finish(
    run: _Run,
    precision: str,
    validation: dict,
    plan: dict | None = None,
    quantization: dict | None = None,
    programs: list[Artifact] | None = None,
    notes: list[str] | None = None,
) -> None:
    """Write the entry's config and manifest: the plan (where built) or the ONNX model is the primary
    artifact; the ONNX model beside a plan and the torch programs are its alternatives."""
    loaded = run.loaded
    name = served_name(loaded.name, precision)
    fitted = _fit_batching(run, precision, plan)
    version_dir = run.version_dir(precision)
    fmt, gpu, alternatives = "onnx", None, list(programs or [])
    if plan is not None:
        onnx = artifact_record(version_dir, "onnx", precision, validation)
        validation = {**plan.pop("validation"), "runtime": "tensorrt"}
        fmt, gpu, alternatives = "tensorrt_plan", plan, [onnx, *alternatives]
    records = _write_probe(run, precision, version_dir)
    if artifact_file(fmt) in records:
        validation["probe"] = records[artifact_file(fmt)]
    for alternative in alternatives:
        if alternative.file in records:
            alternative.validation["probe"] = records[alternative.file]
    manifest = entry_manifest(
        name,
        source_model=loaded.name,
        precision=precision,
        version_dir=version_dir,
        fmt=fmt,
        spec=loaded.input_spec,
        labels=loaded.labels,
        weights=loaded.weights,
        versions=tool_versions(),
        validation=validation,
        alternatives=alternatives,
        quantization=quantization,
        gpu=gpu,
        batching=fitted.record(),
        notes=notes or (),
    )
    config = entry_config(
        name,
        source_model=loaded.name,
        precision=precision,
        fmt=fmt,
        spec=loaded.input_spec,
        num_classes=loaded.num_classes,
        batching=fitted.batching,
    )
    run.writer.finish(name, config, loaded.labels, manifest)


def _write_probe(run: _Run, precision: str, version_dir: Path) -> dict[str, dict[str, Any]]:
    """Write the version's probe.npz; returns each artifact's ``validation["probe"]`` record by file."""
    expected = run.probe.expected.pop(precision, {})
    if not expected:
        return {}
    path = version_dir / probes.PROBE_NAME
    sha256 = probes.write_probe(
        path, run.probe.inputs, {probes.output_key(file): e[0] for file, e in expected.items()}
    )
    return {
        file: probes.Expectation(probes.output_key(file), sha256, tolerance, reference, why).record()
        for file, (_, tolerance, reference, why) in expected.items()
    }


# --------------------------------------------------------------------------------------------- entry


def _preflight(model: str, options: ExportOptions) -> None:
    """The checks that need no model: free version folders, readable image folders."""
    for precision in options.precisions:
        try:
            check_version_free(options.repo, served_name(model, precision), options.version, options.force)
        except repo_writer.VersionExistsError:
            target = options.repo / served_name(model, precision) / str(options.version)
            raise VersionExistsError(
                f"{target} already exists; pass {{option}} to replace it or choose another version",
                option="force",
            ) from None
    if options.int8:
        cal.check_source(options.calib, "calibration")
    if options.eval_data != "auto":
        cal.check_source(options.eval_data, "evaluation")


def export_model(model: str, *, reporter: Reporter | None = None, **options: Any) -> ExportResult:
    """Export ``model`` into ``repo`` as ``<model>`` (ONNX FP32, torch program FP32) and, on request,
    ``<model>_fp16`` (ONNX and torch program) and ``<model>_int8`` (Q/DQ ONNX); returns the entries
    written. ``options`` are :class:`ExportOptions`' fields. Raises :class:`export.errors.ExportError`
    (and the registry's ``UnknownModelError`` / ``WeightsError``) with a one-line reason."""
    try:
        opts = ExportOptions(**options)
    except TypeError as e:
        raise ExportError(f"export_model: {e}") from None
    reporter = reporter or Reporter()
    entry = get_model_entry(model)
    _preflight(entry.name, opts)
    trt = resolve_mode(opts.tensorrt, opts.fp16 or opts.int8)
    result = ExportResult(entry.name, opts.repo, opts.version)
    if trt is not None and not trt.available:
        result.notes.append(f"TensorRT plans skipped: {trt.reason}; writing the ONNX artifacts only")
        reporter.note(result.notes[-1])

    with reporter.stage(f"load {entry.name} ({opts.weights} weights)"):
        loaded = load_model(entry.name, weights=opts.weights, seed=opts.seed)
    try:
        with RepositoryWriter(opts.repo, opts.version, opts.force) as writer:
            run = _Run(opts, loaded, writer, reporter, build_plans=trt is not None and trt.available)
            _export_fp32(run)
            for precision in opts.precisions[1:]:
                _export_precision(run, PRECISIONS[precision])
            count = len(opts.precisions)
            with reporter.stage(f"write {count} entr{'y' if count == 1 else 'ies'} to {opts.repo}"):
                version_dirs = writer.commit()
    except repo_writer.VersionExistsError as e:  # written by someone else while this export ran
        raise VersionExistsError(str(e)) from None
    except RepositoryWriteError as e:
        raise ExportError(str(e)) from None
    for precision, vdir in zip(opts.precisions, version_dirs, strict=True):
        manifest = Manifest.read(vdir)
        seconds = run.seconds.get(precision, 0.0)
        result.entries.append(
            WrittenEntry(manifest.model, precision, vdir, vdir / manifest.artifact, manifest, seconds)
        )
    return result
