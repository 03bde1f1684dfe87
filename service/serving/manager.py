"""The served models: loading versions behind their batchers, and Triton's model control modes.

``none``: load at startup, never change. ``poll``: rescan the repository every ``poll_interval`` seconds and
reload what changed; the new versions serve as soon as they are ready, and the old ones are unloaded only
after their in-flight requests finish. ``explicit``: RepositoryModelLoad / RepositoryModelUnload.
Versions follow the config's version_policy (Triton's default: the latest one).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from modelrepo.layout import is_model_folder, model_names
from modelrepo.names import CONFIG_NAME
from modelrepo.reader import Fingerprint
from service.errors import InvalidInput, ModelLoadError, ModelNotFound, NotAllowed, ServeError, clip
from service.serving.loader import load_versions
from service.serving.model_names import check_model_name
from service.serving.served import ServedVersion, release_memory
from service.settings import Settings
from service.telemetry.prometheus import ServerMetrics

log = logging.getLogger(__name__)

READY, UNAVAILABLE, LOADING, UNLOADING = "READY", "UNAVAILABLE", "LOADING", "UNLOADING"


@dataclass(frozen=True)
class RepositoryEntry:
    """A line of Triton's RepositoryIndex."""

    name: str
    version: str
    state: str
    reason: str


@dataclass
class ModelRecord:
    state: str = UNAVAILABLE
    reason: str = ""
    fingerprint: Fingerprint | None = None  # of the model folder when last (re)loaded


OnChange = Callable[[str], Awaitable[None]]


class ModelManager:
    """Every served model version, and the loading, unloading and polling that change them.

    A model that fails to load is UNAVAILABLE with the reason; the others load and serve. The server is
    ready while no model it should serve has failed: fixing the files (poll) or unloading the model
    (explicit) makes it ready again. Loads and unloads run to completion even when the client that asked
    for them goes away, so no model is left LOADING or half-retired.

    Every name a client gives is checked (:func:`check_model_name`) before a file is looked at, and only
    names of the repository's model folders or of loaded models are acted on: asking to load an unknown
    name is NOT_FOUND and changes nothing (no record, no readiness), so a typo cannot take a replica out
    of service or grow the tables.
    """

    def __init__(
        self,
        settings: Settings,
        metrics: ServerMetrics,
        on_change: OnChange | None = None,
        *,
        cpus: int = 1,
        reserved_names: frozenset[str] = frozenset(),
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.on_change = on_change  # awaited with the model's name after each load/unload
        self.cpus = cpus  # CPU threads the backends may keep busy (service.cpus)
        self.reserved_names = reserved_names  # names no model may take (health service names)
        self.repo = Path(settings.repo).absolute()
        self._routes: dict[str, dict[int, ServedVersion]] = {}
        self._latest: dict[str, ServedVersion] = {}
        self._records: dict[str, ModelRecord] = {}
        self._failed: set[str] = set()  # models that should serve and do not: they keep the server unready
        self._settling: dict[str, Fingerprint] = {}  # poll: changed folders seen once, loaded when seen again
        self._locks: dict[str, asyncio.Lock] = {}
        self._changes: set[asyncio.Task] = set()
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
            except (ModelNotFound, InvalidInput) as e:  # asked for by the operator: not ready without it
                log.error("cannot load model %s: %s", name, e)
                self._records[name] = ModelRecord(UNAVAILABLE, str(e))
                self._failed.add(name)
                await self._changed(name)
            except ServeError as e:
                log.error("cannot load model %s: %s", name, e)
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
        if self._changes:  # loads and unloads under way finish first (their clients may have gone)
            await asyncio.wait(self._changes, timeout=timeout)
        served = [v for versions in self._routes.values() for v in versions.values()]
        self._routes.clear()
        self._latest.clear()
        await asyncio.gather(*(v.retire(timeout) for v in served))

    # ---------------------------------------------------------------- lookup

    def resolve(self, name: str, version: str = "") -> ServedVersion:
        """The version serving ``name`` (``version`` "" = the latest loaded); raises ModelNotFound, or
        InvalidInput for a name no model can have."""
        if not version:
            served = self._latest.get(name)
            if served is None:
                check_model_name(name)
                raise ModelNotFound(self._not_found(name))
            return served
        versions = self._routes.get(name)
        if not versions:
            check_model_name(name)
            raise ModelNotFound(self._not_found(name))
        try:
            return versions[int(version)]
        except (ValueError, KeyError):
            served = ", ".join(str(v) for v in sorted(versions))
            raise ModelNotFound(
                f"model {name!r} has no version {clip(version)} loaded (loaded: {served})"
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
        """Triton's RepositoryIndex: every model on disk or loaded, one entry per loaded version (a broken
        model taken off the disk is no longer listed)."""
        names = sorted(set(model_names(self.repo)) | set(self._routes))
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
        return not self._failed

    def failed(self) -> list[str]:
        """The models that should serve and cannot (they keep the server unready)."""
        return sorted(self._failed)

    # -------------------------------------------------------------- control

    def check_explicit(self, action: str) -> None:
        if self.settings.model_control_mode != "explicit":
            raise NotAllowed(
                f"cannot {action} models: the server runs with --model-control-mode "
                f"{self.settings.model_control_mode}; use explicit to load and unload"
            )

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def _to_completion(self, change: Awaitable[None]) -> None:
        """Run a load or unload as a task of its own: a caller that is cancelled (deadline, disconnect)
        stops waiting, the change does not stop half-way."""
        task = asyncio.get_running_loop().create_task(change)
        self._changes.add(task)
        task.add_done_callback(self._change_done)
        await asyncio.shield(task)

    def _change_done(self, task: asyncio.Task) -> None:
        self._changes.discard(task)
        if (
            not task.cancelled()
            and task.exception() is not None
            and not isinstance(task.exception(), ServeError)
        ):
            log.error("model load/unload failed", exc_info=task.exception())

    async def load(self, name: str) -> None:
        """Load (or reload) ``name``; on failure the versions already serving keep serving. A name that is
        neither a model folder nor loaded is NOT_FOUND and leaves everything as it was."""
        await self._check_known(name)
        await self._to_completion(self._load(name))

    async def unload(self, name: str) -> None:
        await self._check_known(name)
        await self._to_completion(self._unload(name))

    async def _check_known(self, name: str) -> None:
        check_model_name(name)
        if name in self._routes or name in self._records:
            return
        if not await asyncio.to_thread(self._on_disk, name):
            raise ModelNotFound(self._not_on_disk(name))

    def _on_disk(self, name: str) -> bool:
        """Whether ``name`` (a checked name: one path component) is in the repository's listing."""
        return not name.startswith(".") and is_model_folder(self.repo / name)

    def _not_on_disk(self, name: str) -> str:
        return f"no model {name!r} in the model repository (no folder {name}/ holding a {CONFIG_NAME})"

    async def _load(self, name: str) -> None:
        async with self._lock(name):
            known = name in self._records
            record = self._records.setdefault(name, ModelRecord())
            old = dict(self._routes.get(name, {}))
            try:
                if not self._on_disk(name):
                    raise ModelNotFound(self._not_on_disk(name))
                # fingerprint first: a poll retries a broken model only once its files change
                record.fingerprint = await asyncio.to_thread(Fingerprint.of, self.repo / name)
                if name in self.reserved_names:
                    raise ModelLoadError(
                        f"model name {name!r} is reserved for a health service; rename its folder"
                    )
                if not old:
                    record.state = LOADING
                new = await asyncio.to_thread(
                    load_versions, self.settings, self.metrics, name, old, self.cpus
                )
            except ServeError as e:
                if isinstance(e, ModelNotFound) and not known and not old:
                    del self._records[name]  # its folder left before it was ever known: keep nothing
                    raise
                record.reason = str(e)
                if not old:
                    record.state = UNAVAILABLE
                    self._failed.add(name)
                await self._changed(name)
                raise
            for served in new.values():
                if old.get(served.version) is not served:
                    served.start()
            self._routes[name] = new
            self._latest[name] = new[max(new)]
            record.state, record.reason = READY, ""
            self._failed.discard(name)
            await self._changed(name)
            retired = [v for k, v in old.items() if new.get(k) is not v]
            await asyncio.gather(*(v.retire(self.settings.grace_period) for v in retired))
            self.metrics.forget_retired(name)
            if retired:
                del old, retired  # the last references: their sessions are freed here
                await asyncio.to_thread(release_memory)

    async def _unload(self, name: str) -> None:
        async with self._lock(name):
            versions_ = self._routes.pop(name, None)
            self._latest.pop(name, None)
            was_failed = name in self._failed
            self._failed.discard(name)
            if versions_ is None:
                if was_failed:
                    self._records[name].state, self._records[name].reason = UNAVAILABLE, "unloaded"
                    await self._changed(name)
                return
            record = self._records.setdefault(name, ModelRecord())
            record.state, record.reason = UNLOADING, ""
            await self._changed(name)
            await asyncio.gather(*(v.retire(self.settings.grace_period) for v in versions_.values()))
            record.state, record.reason = UNAVAILABLE, "unloaded"
            self.metrics.forget_retired(name)
            del versions_  # the last reference: their sessions are freed here
            await asyncio.to_thread(release_memory)

    async def _changed(self, name: str) -> None:
        if self.on_change is not None:
            await self.on_change(name)

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
        """Load new or changed models once two polls in a row see the same files, unload removed ones. A
        repository that is missing or empty while models are loaded is taken for a volume being remounted:
        the cycle is skipped."""
        on_disk = set(await asyncio.to_thread(model_names, self.repo))
        if self._routes and not on_disk:
            state = "empty" if self.repo.is_dir() else "missing"
            log.warning(
                "repository poll: %s is %s while %d model(s) are loaded; skipping this cycle (unload "
                "explicitly or remove the models one by one to retire them)",
                self.repo,
                state,
                len(self._routes),
            )
            return
        for name in sorted(self._failed - on_disk):  # a broken model removed from disk no longer counts
            self._failed.discard(name)
            await self._changed(name)
        if self.settings.load_model:
            on_disk &= set(self.settings.load_model)
        for name in set(self._settling) - on_disk:
            del self._settling[name]
        for name in sorted(on_disk):
            fingerprint = await asyncio.to_thread(Fingerprint.of, self.repo / name)
            record = self._records.get(name)
            if record is not None and record.fingerprint == fingerprint:
                self._settling.pop(name, None)
                continue
            # A folder copied in file by file (cp -r, a sync) changes between polls: load it only once two
            # polls in a row see the same files, so a half-written model never flips readiness.
            if self._settling.get(name) != fingerprint:
                if name not in self._settling:
                    log.info("repository change in %s: loading once it is unchanged at the next poll", name)
                self._settling[name] = fingerprint
                continue
            del self._settling[name]
            log.info("repository change in %s: (re)loading", name)
            try:
                await self.load(name)
            except ServeError as e:
                log.error("cannot load model %s: %s (the versions already loaded keep serving)", name, e)
        for name in sorted(set(self._routes) - on_disk):
            log.info("model %s left the repository: unloading", name)
            await self.unload(name)
