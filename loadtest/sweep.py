"""One load test: connect, build payloads, then for each concurrency or rate run a step to stability."""

from __future__ import annotations

import datetime
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from loadtest import scrape
from loadtest.inputs import InputOverrides, Payloads, build_payloads, list_images
from loadtest.options import CLOSED_LOOP, LoadTestOptions, TargetError
from loadtest.recorder import Totals, WindowData, clock
from loadtest.stats import (
    LatencySummary,
    LatenessSummary,
    completion_span,
    merge_totals,
    merge_windows,
    summarize_latencies,
    summarize_lateness,
)
from loadtest.target import ModelSpec, connection_for, describe_target, encoder_for
from loadtest.windows import TIME_BOUND, StabilityTracker, WindowSummary
from loadtest.workers import StepCommand, WorkerPool, split_level

# Open loop: the step "fell behind" when more than this fraction of requests went out late.
FELL_BEHIND_FRACTION = 0.05
# A worker busier than this (CPU seconds per wall second) may itself be the bottleneck.
CLIENT_SATURATED = 0.9
START_DELAY_S = 0.25  # lets every worker receive its command before the common start time


@dataclass
class StepResult:
    step: int
    mode: str
    level: float  # concurrency or target rate
    workers: int
    stable: bool
    stop_reason: str
    windows: int
    measured_windows: int
    measured_s: float
    requests: int  # successful requests in the measured windows
    errors: dict[str, int]  # status (gRPC names; HTTP statuses mapped to them) -> count, measured windows
    error_samples: dict[str, str]
    requests_per_s: float
    images_per_s: float
    latency: LatencySummary
    window_summaries: list[WindowSummary]
    totals: Totals  # the whole step: warm-up, measured windows and drain
    client_cpu_utilization: float  # busiest worker's CPU seconds per wall second
    offered_per_s: float | None = None  # open loop only: requests scheduled per second
    lateness: LatenessSummary | None = None  # open loop only
    fell_behind: bool | None = None  # open loop only
    server: scrape.ServerSplit | None = None
    server_error: str | None = None

    @property
    def client_saturated(self) -> bool:
        return self.client_cpu_utilization > CLIENT_SATURATED


@dataclass
class RunResult:
    options: LoadTestOptions
    model: ModelSpec
    payloads: Payloads
    started_at: str
    steps: list[StepResult] = field(default_factory=list)

    def to_dict(self) -> dict:
        options = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self.options).items()}
        options["headers"] = [name for name, _ in self.options.headers]  # values may be secrets
        return {
            "started_at": self.started_at,
            "options": options,
            "model": asdict(self.model),
            "input": {
                "name": self.payloads.input_name,
                "datatype": self.payloads.datatype,
                "shape": list(self.payloads.shape),
                "rows_per_request": self.payloads.rows,
                "source": self.payloads.source,
            },
            "steps": [_jsonable(asdict(step)) for step in self.steps],
        }


def _jsonable(value):
    """JSON has no NaN/inf: write null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def build_step_result(
    options: LoadTestOptions,
    step: int,
    level: float,
    rows: int,
    tracker: StabilityTracker,
    totals: list[Totals],
) -> StepResult:
    measured: WindowData = tracker.measured() if tracker.windows else merge_windows([])
    measured_windows = min(tracker.required, len(tracker.windows))
    measured_s = measured_windows * options.window_s
    latency = summarize_latencies(measured.latencies)
    seconds = completion_span(measured, measured_s) if options.mode != CLOSED_LOOP else measured_s
    rate = latency.count / seconds if seconds else 0.0
    result = StepResult(
        step=step,
        mode=options.mode,
        level=level,
        workers=len(totals),
        stable=tracker.stable,
        stop_reason=tracker.stop_reason or TIME_BOUND,
        windows=len(tracker.windows),
        measured_windows=measured_windows,
        measured_s=measured_s,
        requests=latency.count,
        errors=measured.errors,
        error_samples=measured.error_samples,
        requests_per_s=rate,
        images_per_s=rate * rows,
        latency=latency,
        window_summaries=list(tracker.summaries),
        totals=merge_totals(totals),
        client_cpu_utilization=max((t.cpu_s / t.wall_s for t in totals if t.wall_s > 0), default=0.0),
    )
    if options.mode != CLOSED_LOOP:
        result.offered_per_s = (
            (latency.count + sum(measured.errors.values())) / measured_s if measured_s else 0.0
        )
        result.lateness = summarize_lateness(measured.lateness, options.late_threshold_s)
        result.fell_behind = result.lateness.late_fraction > FELL_BEHIND_FRACTION
    return result


def run_loadtest(options: LoadTestOptions, progress) -> RunResult:
    """Run every step of `options`; `progress` receives step_started / window / step_finished calls."""
    options.validate()
    if options.images is not None:
        list_images(options.images)  # a missing folder is an argument error, server or not
    spec = describe_target(options)
    overrides = InputOverrides(options.input_name, options.shapes, options.datatypes)
    payloads = build_payloads(
        spec,
        options.batch,
        options.images,
        seed=options.seed,
        overrides=overrides,
        encode=encoder_for(options),
    )
    if options.metrics_url:
        scrape.scrape(options.metrics_url)  # fail fast on a wrong --metrics-url
    result = RunResult(options, spec, payloads, datetime.datetime.now(datetime.timezone.utc).isoformat())
    connection = connection_for(options, spec, _requests_in_flight(options))
    pool = WorkerPool(options.workers, connection, payloads.requests)
    try:
        pool.start()
        for step, level in enumerate(options.levels):
            progress.step_started(step, len(options.levels), level)
            result.steps.append(_run_step(options, pool, step, level, payloads.rows, progress))
            progress.step_finished(result.steps[-1])
    finally:
        pool.close()
    return result


def _requests_in_flight(options: LoadTestOptions) -> int:
    """The most requests one worker keeps in flight: its largest share of a concurrency, or the open
    loop's cap."""
    if options.mode == CLOSED_LOOP:
        return max(max(split_level(CLOSED_LOOP, level, options.workers)) for level in options.levels)
    return options.max_inflight


def _scrape_or_note(url: str) -> tuple[scrape.Snapshot | None, str | None]:
    try:
        return scrape.scrape(url), None
    except TargetError as error:
        return None, str(error)


def _run_step(options: LoadTestOptions, pool: WorkerPool, step: int, level: float, rows: int, progress):
    before, scrape_error = _scrape_or_note(options.metrics_url) if options.metrics_url else (None, None)
    tracker = StabilityTracker(
        options.windows,
        options.stability,
        options.max_windows,
        options.max_requests,
        options.mode != CLOSED_LOOP,
    )
    start_at = clock() + START_DELAY_S
    template = StepCommand(
        step=step,
        mode=options.mode,
        level=level,
        start_at=start_at,
        warmup_s=options.warmup_s,
        window_s=options.window_s,
        stop_at=start_at + options.warmup_s + (options.max_windows + 1) * options.window_s,
        timeout_s=options.timeout_s,
        max_inflight=options.max_inflight,
        seed=options.seed + step,
    )

    def on_window(index: int, parts: list[WindowData]) -> bool:
        stop = tracker.add(merge_windows(parts, index), options.window_s)
        progress.window(tracker)
        return stop

    totals = pool.run_step(split_level(options.mode, level, pool.n), template, on_window)
    result = build_step_result(options, step, level, rows, tracker, totals)
    if options.metrics_url and before is not None:
        after, scrape_error = _scrape_or_note(options.metrics_url)
        if after is not None:
            result.server = scrape.server_split(before, after, options.model, options.model_version)
    result.server_error = scrape_error
    return result
