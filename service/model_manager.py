"""The served models: loading versions behind their batchers, and Triton's model control modes.

``none``: load at startup, never change. ``poll``: rescan the repository every ``poll_interval`` seconds and
reload what changed; the new versions serve as soon as they are ready, and the old ones are unloaded only
after their in-flight requests finish. ``explicit``: RepositoryModelLoad / RepositoryModelUnload.
Versions follow the config's version_policy (Triton's default: the latest one).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from modelrepo.config import ConfigError, read_config
from modelrepo.layout import CONFIG_NAME, model_names, versions
from modelrepo.manifest import Manifest, ManifestError, sha256_file
from protos import model_config_pb2 as mc
from service.backends import (
    ArtifactChoice,
    Backend,
    choose_artifact,
    configured_threads,
    create_backend,
    instance_devices,
)
from service.batcher import BatchPolicy, DynamicBatcher
from service.errors import ModelLoadError, ModelNotFound, NotAllowed, ServeError
from service.metrics import ServerMetrics
from service.repository import (
    Fingerprint,
    ModelIO,
    batch_policy,
    model_io,
    select_versions,
    tree_fingerprint,
    warm_up,
)
from service.settings import Settings
from service.stats import VersionTelemetry

log = logging.getLogger(__name__)

READY, UNAVAILABLE, LOADING, UNLOADING = "READY", "UNAVAILABLE", "LOADING", "UNLOADING"
# A single-instance model whose one-row batch takes at most this long runs its batches on the event loop:
# two thread hops per batch cost more than such a batch (and far more on a busy CPU).
INLINE_ROW_SECONDS = 0.0005


class InflightCounter:
    """Requests in flight and a way to wait until there are none. A request costs two integer updates;
    the future :meth:`wait_idle` awaits exists only while someone waits (a drain or a retirement)."""

    __slots__ = ("_waiters", "count")

    def __init__(self) -> None:
        self.count = 0
        self._waiters: list[asyncio.Future] = []

    def enter(self) -> None:
        self.count += 1

    def exit(self) -> None:
        self.count -= 1
        if self.count == 0 and self._waiters:
            for waiter in self._waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._waiters.clear()

    async def wait_idle(self, timeout: float) -> bool:
        """True once nothing is in flight; False if ``timeout`` seconds pass first."""
        if self.count == 0:
            return True
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
        except asyncio.TimeoutError:
            return False
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
        return True


class ServedVersion:
    """One loaded model version: its backends behind one dynamic batcher, and its telemetry."""

    def __init__(
        self,
        *,
        name: str,
        version: int,
        config: mc.ModelConfig,
        manifest: Manifest,
        choice: ArtifactChoice,
        backends: list[Backend],
        policy: BatchPolicy,
        io: ModelIO,
        telemetry: VersionTelemetry,
        load_seconds: float,
        fingerprint: Fingerprint,
        inline: bool = False,
    ) -> None:
        self.name, self.version, self.version_str = name, version, str(version)
        self.config, self.manifest, self.choice, self.io = config, manifest, choice, io
        self.backends = backends
        self.backend_kind = backends[0].kind
        self.precision = choice.precision
        self.telemetry = telemetry
        self.load_seconds = load_seconds
        self.fingerprint = fingerprint
        self.batcher = DynamicBatcher(
            f"{name}/{version}", [b.infer for b in backends], policy, telemetry, inline=inline
        )
        self.inflight = InflightCounter()
        self.response_templates: dict[int, object] = {}  # rows -> prepared response (service.core)

    def start(self) -> None:
        self.batcher.start()
        telemetry = self.telemetry
        telemetry.owner = self  # a reload of the same version takes the telemetry over
        telemetry.ready, telemetry.load_seconds = True, self.load_seconds
        telemetry.queue_depth = lambda: self.batcher.queue_depth
        telemetry.inflight = lambda: self.inflight.count

    async def retire(self, timeout: float) -> None:
        """Unload once in-flight requests are answered (at most ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        if not await self.inflight.wait_idle(timeout):
            log.warning(
                "%s version %d: %d request(s) still in flight after %.1fs; unloading anyway",
                self.name,
                self.version,
                self.inflight.count,
                timeout,
            )
        await self.batcher.close(timeout=max(0.0, deadline - time.monotonic()))
        telemetry = self.telemetry
        if telemetry.owner is self:
            telemetry.ready = False
            telemetry.queue_depth = telemetry.inflight = lambda: 0
        await asyncio.to_thread(_close_backends, self.backends)
        log.info("unloaded %s version %d", self.name, self.version)


def _close_backends(backends: list[Backend]) -> None:
    for backend in backends:
        try:
            backend.close()
        except Exception as e:
            log.warning("closing %s failed: %s", backend.describe(), e)


# ------------------------------------------------------------------------------------------ the manager


@dataclass
class ModelRecord:
    state: str = UNAVAILABLE
    reason: str = ""
    fingerprint: Fingerprint | None = None


@dataclass
class RepositoryEntry:
    name: str
    version: str
    state: str
    reason: str


OnChange = Callable[[str, bool], Awaitable[None]]


class ModelManager:
    """Every served model version, and the loading, unloading and polling that change them."""

    def __init__(self, settings: Settings, metrics: ServerMetrics, on_change: OnChange | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.on_change = on_change  # awaited with (model name, ready) after each load/unload
        self.startup_failures: list[str] = []
        self.repo = Path(settings.repo)
        self._routes: dict[str, dict[int, ServedVersion]] = {}
        self._latest: dict[str, ServedVersion] = {}
        self._records: dict[str, ModelRecord] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._poll_task: asyncio.Task | None = None
        self._stop: asyncio.Event | None = None

    # ------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Load the startup models, then start polling (poll mode)."""
        self._stop = asyncio.Event()
        mode = self.settings.model_control_mode
        if not self.repo.is_dir():
            log.warning("model repository %s does not exist", self.repo)
        names = list(self.settings.load_model) or (model_names(self.repo) if mode != "explicit" else [])
        for name in names:
            try:
                await self.load(name)
            except ServeError as e:
                log.error("cannot load model %s: %s", name, e)
                self.startup_failures.append(name)
        if mode == "poll":
            self._poll_task = asyncio.get_running_loop().create_task(
                self._poll_loop(), name="repository poll"
            )

    async def close(self, timeout: float) -> None:
        if self._stop is not None:
            self._stop.set()
        if self._poll_task is not None:
            self._poll_task.cancel()
            await asyncio.gather(self._poll_task, return_exceptions=True)
        served = [v for versions in self._routes.values() for v in versions.values()]
        self._routes.clear()
        self._latest.clear()
        await asyncio.gather(*(v.retire(timeout) for v in served))

    # ---------------------------------------------------------------- lookup

    def resolve(self, name: str, version: str = "") -> ServedVersion:
        """The version serving ``name`` (``version`` "" = the latest loaded); raises ModelNotFound."""
        if not version:
            served = self._latest.get(name)
            if served is None:
                raise ModelNotFound(self._not_found(name))
            return served
        versions = self._routes.get(name)
        if not versions:
            raise ModelNotFound(self._not_found(name))
        try:
            return versions[int(version)]
        except (ValueError, KeyError):
            served = ", ".join(str(v) for v in sorted(versions))
            raise ModelNotFound(
                f"model {name!r} has no version {version!r} loaded (loaded: {served})"
            ) from None

    def _not_found(self, name: str) -> str:
        record = self._records.get(name)
        if record is not None and record.reason:
            return f"model {name!r} is not available: {record.reason}"
        loaded = sorted(self._latest)
        shown = ", ".join(loaded[:20]) + (", ..." if len(loaded) > 20 else "")
        return f"unknown model {name!r}; loaded models: {shown or 'none'}"

    def loaded(self) -> list[ServedVersion]:
        return [v for name in sorted(self._routes) for _, v in sorted(self._routes[name].items())]

    def versions_of(self, name: str) -> list[ServedVersion]:
        return [v for _, v in sorted(self._routes.get(name, {}).items())]

    def index(self, ready_only: bool = False) -> list[RepositoryEntry]:
        """Triton's RepositoryIndex: every model on disk or loaded, one entry per loaded version."""
        names = sorted(set(model_names(self.repo)) | set(self._routes) | set(self._records))
        out = []
        for name in names:
            record = self._records.get(name, ModelRecord())
            served = self.versions_of(name)
            if served:
                out += [RepositoryEntry(name, v.version_str, READY, "") for v in served]
            elif not ready_only:
                out.append(RepositoryEntry(name, "", record.state, record.reason))
        return out

    @property
    def ready(self) -> bool:
        return not self.startup_failures

    # -------------------------------------------------------------- control

    def check_explicit(self, action: str) -> None:
        if self.settings.model_control_mode != "explicit":
            raise NotAllowed(
                f"cannot {action} models: the server runs with --model-control-mode "
                f"{self.settings.model_control_mode}; use explicit to load and unload"
            )

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def load(self, name: str) -> None:
        """Load (or reload) ``name``; on failure the versions already serving keep serving."""
        async with self._lock(name):
            model_dir = self.repo / name
            if "/" in name or name.startswith(".") or not (model_dir / CONFIG_NAME).is_file():
                raise ModelNotFound(
                    f"no model {name!r} in repository {self.repo} (expected {model_dir / CONFIG_NAME})"
                )
            record = self._records.setdefault(name, ModelRecord())
            old = dict(self._routes.get(name, {}))
            if not old:
                record.state = LOADING
            record.fingerprint = tree_fingerprint(model_dir)
            try:
                new = await asyncio.to_thread(self._prepare, name, model_dir, old)
            except ServeError as e:
                record.reason = str(e)
                if not old:
                    record.state = UNAVAILABLE
                raise
            for served in new.values():
                if old.get(served.version) is not served:
                    served.start()
            self._routes[name] = new
            self._latest[name] = new[max(new)]
            record.state, record.reason = READY, ""
            if self.on_change is not None:
                await self.on_change(name, True)
            retired = [v for k, v in old.items() if new.get(k) is not v]
            await asyncio.gather(*(v.retire(self.settings.grace_period) for v in retired))

    async def unload(self, name: str) -> None:
        async with self._lock(name):
            versions_ = self._routes.pop(name, None)
            self._latest.pop(name, None)
            if versions_ is None:
                if not (self.repo / name / CONFIG_NAME).is_file() and name not in self._records:
                    raise ModelNotFound(f"no model {name!r} in repository {self.repo}")
                return
            record = self._records.setdefault(name, ModelRecord())
            record.state, record.reason = UNLOADING, ""
            if self.on_change is not None:
                await self.on_change(name, False)
            await asyncio.gather(*(v.retire(self.settings.grace_period) for v in versions_.values()))
            record.state, record.reason = UNAVAILABLE, "unloaded"

    # ----------------------------------------------------------------- poll

    async def _poll_loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._stop.wait(), self.settings.poll_interval)
                return
            except asyncio.TimeoutError:
                pass
            try:
                await self.poll_once()
            except Exception:
                log.exception("repository poll failed")

    async def poll_once(self) -> None:
        """Load new or changed models, unload removed ones."""
        on_disk = set(model_names(self.repo))
        if self.settings.load_model:
            on_disk &= set(self.settings.load_model)
        for name in sorted(on_disk):
            fingerprint = await asyncio.to_thread(tree_fingerprint, self.repo / name)
            record = self._records.get(name)
            if record is not None and record.fingerprint == fingerprint:
                continue
            log.info("repository change in %s: (re)loading", name)
            try:
                await self.load(name)
            except ServeError as e:
                log.error("cannot load model %s: %s (the versions already loaded keep serving)", name, e)
        for name in sorted(set(self._routes) - on_disk):
            log.info("model %s left the repository: unloading", name)
            await self.unload(name)

    # ------------------------------------------------------------- building

    def _prepare(self, name: str, model_dir: Path, old: dict[int, ServedVersion]) -> dict[int, ServedVersion]:
        """Blocking: read the model folder and build the versions to serve (reusing unchanged ones)."""
        try:
            config = read_config(model_dir)
        except ConfigError as e:
            raise ModelLoadError(str(e)) from None
        if config.name and config.name != name:
            raise ModelLoadError(
                f"{model_dir / CONFIG_NAME} names model {config.name!r}; it must match its folder {name!r}"
            )
        config.name = name
        available = versions(model_dir)
        selected = select_versions(config.version_policy, available)
        if not selected:
            raise ModelLoadError(
                f"model {name}: no version folder matches the version policy (found {available or 'none'})"
            )
        config_fp = tree_fingerprint(model_dir)  # narrowed below to the files outside version folders
        config_fp = tuple(e for e in config_fp if not e[0].split("/")[0].isdigit())
        built: dict[int, ServedVersion] = {}
        try:
            for version in selected:
                version_dir = model_dir / str(version)
                fingerprint = (config_fp, tree_fingerprint(version_dir))
                previous = old.get(version)
                if previous is not None and previous.fingerprint == fingerprint:
                    built[version] = previous
                else:
                    built[version] = self._build_version(name, version, version_dir, config, fingerprint)
        except BaseException:
            _close_backends([b for v in built.values() if old.get(v.version) is not v for b in v.backends])
            raise
        return built

    def _build_version(
        self, name: str, version: int, version_dir: Path, config: mc.ModelConfig, fingerprint: Fingerprint
    ) -> ServedVersion:
        started = time.monotonic()
        try:
            manifest = Manifest.read(version_dir)
        except ManifestError as e:
            raise ModelLoadError(f"model {name} version {version}: {e}") from None
        io = model_io(name, config, manifest, version_dir.parent)
        policy = batch_policy(name, config)
        choice = choose_artifact(manifest, version_dir, self.settings.device)
        if not choice.path.is_file():
            raise ModelLoadError(f"model {name} version {version}: artifact {choice.path} does not exist")
        digest = sha256_file(choice.path)
        if digest != choice.sha256:
            raise ModelLoadError(
                f"model {name} version {version}: sha256 of {choice.path.name} is {digest}, the "
                f"manifest records {choice.sha256} (corrupt or replaced artifact)"
            )
        devices = instance_devices(config, choice.device)
        backends: list[Backend] = []
        try:
            for device in devices:
                backends.append(create_backend(choice, config, device, devices.count("cpu")))
            row_seconds = warm_up(name, backends, io)
            inline = len(backends) == 1 and row_seconds <= INLINE_ROW_SECONDS
            if inline and devices == ["cpu"] and choice.format == "onnx" and not configured_threads(config):
                # A microsecond model gains nothing from a thread pool; waking one per op costs CPU.
                single = create_backend(choice, config, "cpu", 1, threads=1)
                backends.append(single)
                warm_up(name, [single], io)
                backends.pop(0).close()
        except BaseException:
            _close_backends(backends)
            raise
        telemetry = self.metrics.telemetry(name, str(version), backends[0].kind, choice.precision)
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
            config=config,
            manifest=manifest,
            choice=choice,
            backends=backends,
            policy=policy,
            io=io,
            telemetry=telemetry,
            load_seconds=seconds,
            fingerprint=fingerprint,
            inline=inline,
        )
