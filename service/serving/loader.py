"""Building the versions of a model to serve: read the folder, pick the artifact, start and warm up its
instances, decide how its batches run. Blocking: the manager runs it in a worker thread.

What was picked, and why better artifacts were skipped, is logged, labels the version's metrics
(``backend``: e.g. ``torch_cuda``) and is added to the served ModelConfig's ``parameters``
(``served_artifact``, ``served_backend``, ``served_device``, ``skipped_artifacts``)."""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from modelrepo.batching import DEFAULT_LATENCY_BUDGET_MS, fit, measure_curve, tuning_limit
from modelrepo.manifest import Manifest
from modelrepo.reader import EntryError, ModelFolder, ModelIO, VersionEntry, read_model_folder, read_version
from protos import model_config_pb2 as mc
from service.backends import (
    ArtifactChoice,
    Backend,
    choose_artifact,
    configured_threads,
    create_backend,
    instance_devices,
)
from service.batching import policy_from_config
from service.errors import ModelLoadError, ServeError
from service.serving.numerics import check_numerics
from service.serving.served import ServedVersion, close_backends
from service.settings import Settings
from service.telemetry.prometheus import ServerMetrics

log = logging.getLogger(__name__)

# A single-instance model whose one-row batch takes at most this long runs its batches on the event loop:
# two thread hops per batch cost more than such a batch (and far more on a busy CPU).
INLINE_ROW_SECONDS = 0.0005


def load_versions(
    settings: Settings, metrics: ServerMetrics, name: str, old: dict[int, ServedVersion], cpus: int
) -> dict[int, ServedVersion]:
    """The versions of ``name`` to serve, reusing those of ``old`` whose files did not change. Any failure
    is a :class:`ModelLoadError` with the reason; nothing built before it is left running."""
    try:
        folder = read_model_folder(Path(settings.repo), name)
    except EntryError as e:
        raise ModelLoadError(str(e)) from None
    except OSError as e:
        raise ModelLoadError(f"model {name}: cannot read its folder: {e}") from None
    built: dict[int, ServedVersion] = {}
    try:
        for version in folder.versions:
            entry = read_version(folder, version)
            previous = old.get(version)
            if previous is not None and previous.fingerprint == entry.fingerprint:
                built[version] = previous
            else:
                built[version] = _build_version(settings, metrics, folder, entry, cpus)
    except BaseException as e:
        close_backends([b for v in built.values() if old.get(v.version) is not v for b in v.backends])
        if isinstance(e, EntryError):
            raise ModelLoadError(str(e)) from None
        if isinstance(e, (ServeError, KeyboardInterrupt, SystemExit)):
            raise
        raise ModelLoadError(f"model {name}: {type(e).__name__}: {e}") from None
    return built


def _build_version(
    settings: Settings, metrics: ServerMetrics, folder: ModelFolder, entry: VersionEntry, cpus: int
) -> ServedVersion:
    started = time.monotonic()
    name, version, config, manifest = folder.name, entry.version, folder.config, entry.manifest
    try:
        policy = policy_from_config(config)
    except ValueError as e:
        raise ModelLoadError(f"model {name}: dynamic_batching: {e}") from None
    choice = choose_artifact(manifest, entry.path, settings.device, settings.backend)
    data = read_artifact(name, version, choice)
    devices = instance_devices(config, choice.device)
    io, spec = entry.io, entry.io.input_spec
    if settings.tune:
        config, io = raised_to_limit(config, io, manifest)
    backends: list[Backend] = []
    try:
        for device in devices:
            threads = cpus // max(1, devices.count("cpu"))
            backends.append(create_backend(choice, config, device, data, threads, spec))
        row_seconds = warm_up(name, backends, io)
        # Inline batches run on the event loop: never where a batch waits for a GPU stream.
        inline = len(backends) == 1 and row_seconds <= INLINE_ROW_SECONDS and devices == ["cpu"]
        if inline and choice.format == "onnx" and not configured_threads(config):
            # A microsecond model gains nothing from a thread pool; waking one per op costs CPU.
            single = create_backend(choice, config, "cpu", data, 1, spec)
            backends.append(single)
            warm_up(name, [single], io)
            backends.pop(0).close()
        check_numerics(name, version, entry.path, choice, backends, io, manifest, metrics)
    except BaseException:
        close_backends(backends)
        raise
    if settings.tune:
        config, io = tune(name, config, io, manifest, backends[0])
        policy = policy_from_config(config)
    telemetry = metrics.telemetry(name, str(version), backends[0].label, choice.precision)
    seconds = time.monotonic() - started
    log.info(
        "loaded %s version %d: %s x%d, %s, %s, in %.2fs (one row: %.2f ms)",
        name,
        version,
        backends[0].describe(),
        len(backends),
        choice.path.name,
        choice.precision,
        seconds,
        row_seconds * 1e3,
    )
    return ServedVersion(
        name=name,
        version=version,
        config=served_config(config, choice, backends[0]),
        manifest=manifest,
        choice=choice,
        backends=backends,
        policy=policy,
        io=io,
        telemetry=telemetry,
        load_seconds=seconds,
        fingerprint=entry.fingerprint,
        inline=inline,
    )


def raised_to_limit(
    config: mc.ModelConfig, io: ModelIO, manifest: Manifest
) -> tuple[mc.ModelConfig, ModelIO]:
    """The config with ``max_batch_size`` raised to the model's limit (kept in the manifest's batching
    record), for instances that ``--tune`` measures up to it: the export may have fitted the cap on
    another device (a CPU's cap, served on a GPU)."""
    limit = tuning_limit(manifest.batching, config.max_batch_size)
    if limit == config.max_batch_size:
        return config, io
    raised = mc.ModelConfig()
    raised.CopyFrom(config)
    raised.max_batch_size = limit
    return raised, replace(io, max_batch_size=limit)


def tune(
    name: str, config: mc.ModelConfig, io: ModelIO, manifest: Manifest, backend: Backend
) -> tuple[mc.ModelConfig, ModelIO]:
    """The config with its batching fitted to latencies measured now, on this machine and instance
    (``--tune``), within the latency budget the export used, up to the config's ``max_batch_size`` (the
    model's limit, :func:`raised_to_limit`); the reason goes into its parameters."""
    budget_ms = float((manifest.batching or {}).get("latency_budget_ms", DEFAULT_LATENCY_BUDGET_MS))
    curve = measure_curve(backend.run, io.input_shape, config.max_batch_size, budget_ms / 1e3)
    fitted = fit(curve, config.max_batch_size, budget_ms)
    tuned = mc.ModelConfig()
    tuned.CopyFrom(config)
    tuned.max_batch_size = fitted.batching.max_batch_size
    if tuned.HasField("dynamic_batching"):
        batching = tuned.dynamic_batching
        batching.ClearField("preferred_batch_size")
        batching.preferred_batch_size.extend(fitted.batching.preferred_batch_sizes)
        batching.max_queue_delay_microseconds = fitted.batching.max_queue_delay_microseconds
        batching.default_queue_policy.max_queue_size = fitted.batching.max_queue_size
    tuned.parameters["batching_tuned"].string_value = fitted.reason
    log.info("tuned %s at warm-up: %s", name, fitted.reason)
    return tuned, replace(io, max_batch_size=tuned.max_batch_size)


def served_config(config: mc.ModelConfig, choice: ArtifactChoice, backend: Backend) -> mc.ModelConfig:
    """The config as served: config.pbtxt plus what was picked here and why better ones were not."""
    served = mc.ModelConfig()
    served.CopyFrom(config)
    picked = {
        "served_artifact": choice.path.name,
        "served_backend": backend.label,
        "served_device": backend.device,
        "skipped_artifacts": choice.fallback_reason or "",
    }
    for key, value in picked.items():
        served.parameters[key].string_value = value
    return served


def read_artifact(name: str, version: int, choice: ArtifactChoice) -> bytes:
    """The artifact's bytes, checked against the manifest's sha256: the bytes checked are the bytes the
    backends load (no window for the file to change in between)."""
    try:
        data = choice.path.read_bytes()
    except FileNotFoundError:
        raise ModelLoadError(
            f"model {name} version {version}: artifact {choice.path.name} does not exist"
        ) from None
    except OSError as e:
        raise ModelLoadError(f"model {name} version {version}: cannot read {choice.path.name}: {e}") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != choice.sha256:
        raise ModelLoadError(
            f"model {name} version {version}: sha256 of {choice.path.name} is {digest}, the "
            f"manifest records {choice.sha256} (corrupt or replaced artifact)"
        )
    return data


def warm_up(name: str, backends: list[Backend], io: ModelIO) -> float:
    """Run every instance before the version reports ready, checking the output shape against the config.

    Returns the median seconds of a one-row batch on the first instance (to choose inline execution)."""
    sizes = sorted(
        {1, min(2, io.max_batch_size)}
        | ({io.max_batch_size} if any(b.device.startswith("cuda") for b in backends) else set())
    )
    batches = [np.zeros((rows, *io.input_shape), dtype=np.float32) for rows in sizes]
    batches.append(np.zeros((1, *io.input_spec.pixels_shape), dtype=np.uint8))  # the pixels path
    for backend in backends:
        for batch in batches:
            rows = len(batch)
            try:
                out = backend.run(batch)
            except Exception as e:
                raise ModelLoadError(
                    f"model {name}: warm-up with batch {rows} on {backend.describe()} failed: {e}"
                ) from None
            if out.shape != (rows, io.num_classes):
                raise ModelLoadError(
                    f"model {name}: warm-up with batch {rows} returned shape {list(out.shape)}, "
                    f"the config says [{rows}, {io.num_classes}]"
                )
    one_row = np.zeros((1, *io.input_shape), dtype=np.float32)
    times = []
    for _ in range(5):
        started = time.perf_counter()
        backends[0].infer(one_row)
        times.append(time.perf_counter() - started)
    return float(np.median(times))
