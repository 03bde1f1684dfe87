"""The server-side split from cnnserve's Prometheus metrics, scraped before and after a step.

Only the metric names of docs/ARCHITECTURE.md are read; other targets simply have none of them.
Series are selected by the ``model`` label (and ``version`` when one was asked for) and summed over
the other labels (``outcome``, ``backend``, ``precision``).
"""

from __future__ import annotations

import math
import urllib.error
import urllib.request
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from loadtest.options import TargetError

REQUESTS = "cnnserve_requests_total"
QUEUE = "cnnserve_queue_duration_seconds"
COMPUTE = "cnnserve_compute_duration_seconds"
BATCH = "cnnserve_batch_size"
# The text parser names a counter's family without `_total`.
FAMILIES = frozenset({"cnnserve_requests", REQUESTS, QUEUE, COMPUTE, BATCH})

# (sample name, frozenset of label items) -> value
Snapshot = dict[tuple[str, frozenset], float]


def parse_metrics(text: str) -> Snapshot:
    snapshot: Snapshot = {}
    for family in text_string_to_metric_families(text):
        if family.name not in FAMILIES:
            continue
        for sample in family.samples:
            snapshot[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return snapshot


def scrape(url: str, timeout_s: float = 5.0) -> Snapshot:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            text = response.read().decode("utf-8")
    except (urllib.error.URLError, OSError) as error:
        raise TargetError(f"cannot scrape --metrics-url {url}: {error}") from None
    try:
        return parse_metrics(text)
    except ValueError as error:
        raise TargetError(f"--metrics-url {url} did not return Prometheus text format: {error}") from None


@dataclass(frozen=True)
class BatchBucket:
    low: float  # exclusive lower bound (the previous bucket's `le`)
    high: float  # inclusive upper bound (`le`; inf for +Inf)
    count: int  # executed batches in (low, high]


@dataclass(frozen=True)
class ServerSplit:
    requests: int  # ModelInfer requests the server counted, all outcomes
    requests_by_outcome: dict[str, int]
    queue_mean_s: float  # NaN where the server recorded none
    compute_mean_s: float
    batches: int
    batch_mean: float
    batch_buckets: tuple[BatchBucket, ...]


def _delta(before: Snapshot, after: Snapshot, sample: str, model: str, version: str, by: str | None = None):
    """Sum of after - before over the model's series of `sample`, keyed by label `by` when given."""
    sums: dict[str, float] = {}
    for (name, labels), value in after.items():
        if name != sample:
            continue
        label = dict(labels)
        if label.get("model") != model or (version and label.get("version") != version):
            continue
        key = label.get(by, "") if by else ""
        sums[key] = sums.get(key, 0.0) + value - before.get((name, labels), 0.0)
    return sums


def _mean(before: Snapshot, after: Snapshot, histogram: str, model: str, version: str) -> float:
    total = _delta(before, after, f"{histogram}_sum", model, version).get("", 0.0)
    count = _delta(before, after, f"{histogram}_count", model, version).get("", 0.0)
    return total / count if count > 0 else math.nan


def server_split(before: Snapshot, after: Snapshot, model: str, version: str = "") -> ServerSplit | None:
    """The step's share of the server's metrics; None when the target exports none for this model."""
    outcomes = _delta(before, after, REQUESTS, model, version, by="outcome")
    if not outcomes and not _delta(before, after, f"{BATCH}_count", model, version):
        return None
    cumulative = _delta(before, after, f"{BATCH}_bucket", model, version, by="le")
    bounds = sorted(cumulative, key=float)
    buckets, previous_count, previous_bound = [], 0.0, 0.0
    for bound in bounds:
        count = cumulative[bound]
        buckets.append(BatchBucket(previous_bound, float(bound), round(count - previous_count)))
        previous_count, previous_bound = count, float(bound)
    batches = _delta(before, after, f"{BATCH}_count", model, version).get("", 0.0)
    return ServerSplit(
        requests=round(sum(outcomes.values())),
        requests_by_outcome={k: round(v) for k, v in sorted(outcomes.items())},
        queue_mean_s=_mean(before, after, QUEUE, model, version),
        compute_mean_s=_mean(before, after, COMPUTE, model, version),
        batches=round(batches),
        batch_mean=_mean(before, after, BATCH, model, version),
        batch_buckets=tuple(buckets),
    )
