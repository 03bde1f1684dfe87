"""The load-time numerics check: run the artifact's probe (``probe.npz``, :mod:`modelrepo.probe`) on every
instance, on this host's CPU or GPU, before the version is served.

An artifact checked on the host that exported it can compute differently here: onnxruntime's int8
kernels saturate on x86 CPUs without VNNI, an fp16 program may never have run before its first GPU.
Where the outputs disagree with the expected ones beyond the artifact's tolerance the version fails to
load, with the reason in the log, the repository index and ``cnnserve_model_numerics_check_failures``,
and readiness follows the rule for any model that fails to load. Triton checks no numerics at load;
this is ours. Manifests written before probes existed have none and load as before.
"""

from __future__ import annotations

import logging
from pathlib import Path

from modelrepo.probe import Expectation, ProbeError, agreement, read_probe
from service.backends import ArtifactChoice, Backend
from service.errors import ModelLoadError
from service.telemetry.prometheus import ServerMetrics

log = logging.getLogger(__name__)


def check_numerics(
    name: str,
    version: int,
    version_dir: Path,
    choice: ArtifactChoice,
    backends: list[Backend],
    metrics: ServerMetrics,
) -> bool:
    """Raise :class:`ModelLoadError` where an instance's outputs on the probe are off; returns whether a
    probe ran (False: the manifest has none for this artifact)."""
    where = f"model {name} version {version}"
    try:
        expectation = Expectation.from_validation(choice.validation)
        if expectation is None:
            return False
        inputs, expected = read_probe(version_dir, expectation)
    except ProbeError as e:
        raise ModelLoadError(f"{where}: numerics probe of {choice.path.name}: {e}") from None
    for backend in backends:
        try:
            outputs = backend.run(inputs)
        except Exception as e:
            raise ModelLoadError(
                f"{where}: numerics probe of {choice.path.name} failed on {backend.describe()}: {e}"
            ) from None
        found = agreement(outputs, expected, expectation.tolerance)
        if not found.passed:
            reason = (
                f"{where}: numerics check failed: {choice.path.name} on {backend.describe()} is off by "
                f"{found.max_abs_error:.4g} from the outputs expected on its {len(inputs)} probe inputs "
                f"({expectation.reference}; allowed {found.allowed:.4g}: {expectation.why}); this host "
                "computes the artifact differently from the one that exported it"
            )
            log.error("%s", reason)
            metrics.count_numerics_failure(name, str(version))
            raise ModelLoadError(reason)
    log.info(
        "%s: numerics probe of %s passed on %d instance(s) (%d inputs, against %s)",
        where,
        choice.path.name,
        len(backends),
        len(inputs),
        expectation.reference,
    )
    return True
