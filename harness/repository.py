"""Repository entries for tests and benchmarks.

``python -m export`` writes the real entries; ``copy_entry`` derives variants of one (another name, other
batching settings) with its artifact and manifest unchanged. ``add_model`` writes, through the same
``modelrepo.entries`` and writer as the export, an entry for what the export pipeline does not make: a
``torch.export`` program, a backend that fails on demand, or the benchmark's random-weight models. torch is
imported only by the functions that export a network.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from modelrepo.config import read_config, write_config
from modelrepo.entries import Batching, entry_config, entry_manifest
from modelrepo.layout import versions
from modelrepo.manifest import Manifest, package_versions
from modelrepo.names import artifact_file
from modelrepo.preprocess import InputSpec
from modelrepo.writer import RepositoryWriter


def export_torch_program(
    model_name: str, path: Path, *, weights: str = "random", seed: int = 0
) -> tuple[InputSpec, list[str]]:
    """Save a registry model (``weights``: random with ``seed``, or a checkpoint path) as a ``torch.export``
    program (``model.pt2``) with a dynamic batch axis."""
    import torch

    from models import get_labels, get_model, get_model_entry

    entry = get_model_entry(model_name)
    model = get_model(model_name, weights=weights, seed=seed).eval()
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(
        model, (torch.zeros((2, *entry.input_spec.shape)),), dynamic_shapes=({0: batch},)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(path))
    return entry.input_spec, get_labels(model_name)


def faulty_onnx(path: Path, spec: InputSpec, num_classes: int = 10) -> None:
    """A linear classifier that fails in onnxruntime when any input value is >= 1 (an out-of-range Gather
    index): a backend that breaks on demand, for the error-isolation tests."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    features = int(np.prod(spec.shape))
    weights = numpy_helper.from_array(
        rng.normal(0, 0.05, (features, num_classes)).astype(np.float32), "weights"
    )
    table = numpy_helper.from_array(np.zeros((1, num_classes), np.float32), "bias_table")
    nodes = [
        helper.make_node("Flatten", ["input"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "weights"], ["linear"]),
        helper.make_node("ReduceMax", ["input"], ["peak"], keepdims=0),
        helper.make_node("Cast", ["peak"], ["index"], to=TensorProto.INT64),
        helper.make_node("Gather", ["bias_table", "index"], ["bias"], axis=0),
        helper.make_node("Add", ["linear", "bias"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "faulty",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *spec.shape])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", num_classes])],
        initializer=[weights, table],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def add_model(
    repo: Path,
    name: str,
    artifact: Path,
    *,
    spec: InputSpec,
    labels: Sequence[str],
    version: int = 1,
    fmt: str = "onnx",
    source_model: str = "lenet5",
    precision: str = "fp32",
    max_batch_size: int = 16,
    dynamic_batching: bool = True,
    preferred_batch_sizes: Sequence[int] = (),
    max_queue_delay_microseconds: int = 0,
    max_queue_size: int = 0,
    instance_count: int = 1,
) -> Path:
    """Write ``artifact`` (format ``fmt``) into ``repo`` as version ``version`` of model ``name``, with its
    manifest, config.pbtxt and labels.txt built as ``python -m export`` builds them. Returns the version
    folder."""
    batching = Batching(
        max_batch_size,
        tuple(preferred_batch_sizes),
        max_queue_delay_microseconds,
        max_queue_size,
        dynamic=dynamic_batching,
    )
    with RepositoryWriter(repo, version, replace=True) as writer:
        version_dir = writer.version_dir(name)
        shutil.copyfile(artifact, version_dir / artifact_file(fmt))
        common = {"source_model": source_model, "precision": precision, "fmt": fmt, "spec": spec}
        manifest = entry_manifest(
            name,
            **common,
            version_dir=version_dir,
            labels=labels,
            weights={"source": "random"},
            versions=package_versions("torch", "onnx", "onnxruntime"),
        )
        config = entry_config(
            name, **common, num_classes=len(labels), batching=batching, instance_count=instance_count
        )
        writer.finish(name, config, list(labels), manifest)
        (version_dir,) = writer.commit()
    return version_dir


def copy_entry(
    model_dir: Path,
    repo: Path,
    name: str | None = None,
    *,
    max_batch_size: int | None = None,
    dynamic_batching: bool = True,
    preferred_batch_sizes: Sequence[int] | None = None,
    max_queue_delay_microseconds: int | None = None,
    max_queue_size: int | None = None,
    instance_count: int | None = None,
) -> Path:
    """Copy the model folder ``model_dir`` (config.pbtxt, labels.txt, version folders) into ``repo`` as
    ``name`` (default: its own name), renamed in config.pbtxt and every manifest; the other arguments
    replace those settings of the config (None: keep; preferred batch sizes over a new ``max_batch_size``
    are dropped). Returns the new model folder."""
    name = name or model_dir.name
    target = repo / name
    shutil.copytree(model_dir, target)
    config = read_config(target)
    config.name = name
    if max_batch_size is not None:
        config.max_batch_size = max_batch_size
    if not dynamic_batching:
        config.ClearField("dynamic_batching")
    else:
        batching = config.dynamic_batching
        if preferred_batch_sizes is None:
            preferred_batch_sizes = [s for s in batching.preferred_batch_size if s <= config.max_batch_size]
        batching.ClearField("preferred_batch_size")
        batching.preferred_batch_size.extend(preferred_batch_sizes)
        if max_queue_delay_microseconds is not None:
            batching.max_queue_delay_microseconds = max_queue_delay_microseconds
        if max_queue_size is not None:
            batching.default_queue_policy.max_queue_size = max_queue_size
    if instance_count is not None:
        config.instance_group[0].count = instance_count
    write_config(target, config)
    for version in versions(target):
        manifest = Manifest.read(target / str(version))
        manifest.model = name
        manifest.write(target / str(version))
    return target


def rewrite_probe(version_dir: Path, outputs: dict[str, np.ndarray]) -> None:
    """Replace the expected outputs of the artifacts named in ``outputs`` (file name -> outputs on the
    probe's inputs) in the version's probe.npz, and record its new sha256 in every probe record of the
    manifest: what a tool that changes an artifact's weights must do, or the server refuses the version."""
    import json

    from modelrepo.probe import PROBE_NAME, Expectation, output_key, read_probe, write_probe

    manifest = Manifest.read(version_dir)
    arrays, inputs = {}, None
    for artifact in manifest.artifacts:
        expectation = Expectation.from_validation(artifact.validation)
        if expectation is not None:
            inputs, expected = read_probe(version_dir, expectation)
            arrays[output_key(artifact.file)] = outputs.get(artifact.file, expected)
    if inputs is None:
        return
    sha256 = write_probe(version_dir / PROBE_NAME, inputs, arrays)
    path = version_dir / "manifest.json"
    data = json.loads(path.read_text())
    for record in [data["validation"], *(a["validation"] for a in data.get("alternatives", []))]:
        if "probe" in record:
            record["probe"]["sha256"] = sha256
    path.write_text(json.dumps(data))


def probe_inputs(version_dir: Path) -> np.ndarray:
    """The inputs of the version's probe.npz (FP32)."""
    from modelrepo.probe import Expectation, read_probe

    expectation = Expectation.from_validation(Manifest.read(version_dir).validation)
    return read_probe(version_dir, expectation)[0]
