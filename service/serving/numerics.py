"""The load-time numerics check: run the artifact's probe (``probe.npz``, :mod:`modelrepo.probe`) on every
instance, on this host's CPU or GPU, before the version is served.

An artifact checked on the host that exported it can compute differently here: onnxruntime's int8
kernels saturate on x86 CPUs without VNNI, an fp16 program may never have run before its first GPU.
Where the outputs disagree with the expected ones beyond the artifact's tolerance, or the probe cannot
be read or run, the version fails to load, with the reason in the log, the repository index and
``cnnserve_model_numerics_check_failures``, and readiness follows the rule for any model that fails to
load. Triton checks no numerics at load; this is ours. Manifests written before probes existed have none
and load as before (an int8 entry of that age with 8-bit weights is named in a warning where this CPU
would saturate it).
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np

from modelrepo.manifest import Manifest
from modelrepo.probe import Expectation, ProbeError, agreement, read_probe
from modelrepo.reader import ModelIO
from service.backends import ArtifactChoice, Backend
from service.errors import ModelLoadError
from service.telemetry.prometheus import ServerMetrics

log = logging.getLogger(__name__)
# x86 instructions that accumulate u8 x s8 products in 32 bits (no 16-bit saturation)
EXACT_INT8_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


def check_numerics(
    name: str,
    version: int,
    version_dir: Path,
    choice: ArtifactChoice,
    backends: list[Backend],
    io: ModelIO,
    manifest: Manifest,
    metrics: ServerMetrics,
) -> bool:
    """Raise :class:`ModelLoadError` where an instance's outputs on the probe are off; returns whether a
    probe ran (False: the manifest has none for this artifact)."""
    where = f"model {name} version {version}"

    def refuse(reason: str) -> ModelLoadError:
        log.error("%s", reason)
        metrics.count_numerics_failure(name, str(version))
        return ModelLoadError(reason)

    try:
        expectation = Expectation.from_validation(choice.validation)
        if expectation is None:
            _warn_unprobed_int8(where, choice, manifest)
            return False
        inputs, expected = read_probe(version_dir, expectation, tuple(io.input_shape), io.num_classes)
    except ProbeError as e:
        raise refuse(f"{where}: numerics probe of {choice.path.name}: {e}") from None
    rows = max(1, io.max_batch_size)
    for backend in backends:
        try:
            outputs = np.concatenate([backend.run(inputs[i : i + rows]) for i in range(0, len(inputs), rows)])
        except Exception as e:
            raise refuse(
                f"{where}: numerics probe of {choice.path.name} failed on {backend.describe()}: {e}"
            ) from None
        found = agreement(outputs, expected, expectation.tolerance)
        if not found.passed:
            raise refuse(
                f"{where}: numerics check failed: {choice.path.name} on {backend.describe()} is off by "
                f"{found.max_abs_error:.4g} from the outputs expected on its {len(inputs)} probe inputs "
                f"({expectation.reference}; allowed {found.allowed:.4g}: {expectation.why}); this host "
                "computes the artifact differently from the one that exported it"
            )
    log.info(
        "%s: numerics probe of %s passed on %d instance(s) (%d inputs, against %s)",
        where,
        choice.path.name,
        len(backends),
        len(inputs),
        expectation.reference,
    )
    return True


def _warn_unprobed_int8(where: str, choice: ArtifactChoice, manifest: Manifest) -> None:
    quantization = manifest.quantization or {}
    eight_bit = "uint8" in str(quantization.get("activations", "")) and not quantization.get("reduce_range")
    if choice.format == "onnx" and choice.device == "cpu" and eight_bit and not cpu_has_exact_int8():
        log.warning(
            "%s: int8 model with 8-bit weights and no numerics probe (exported before both): onnxruntime's "
            "int8 kernels saturate on this CPU (no VNNI), so its accuracy may be below the recorded one; "
            "export it again",
            where,
        )


@functools.cache
def cpu_has_exact_int8() -> bool:
    """Whether this x86 CPU accumulates int8 products in 32 bits (VNNI or AMX); True where unknown."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = {flag for line in f if line.startswith("flags") for flag in line.split()[2:]}
    except OSError:
        return True
    return not flags or "avx2" not in flags or bool(EXACT_INT8_FLAGS & flags)
