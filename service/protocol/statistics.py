"""Triton's model statistics, built once: the JSON document its HTTP front end answers, which the gRPC
codec turns into the ``ModelStatisticsResponse`` of the same fields."""

from __future__ import annotations

from service.telemetry.stats import ModelStats


def _duration(count: int, ns: int) -> dict:
    return {"count": count, "ns": ns}


def statistics_document(stats: list[tuple[str, str, ModelStats]]) -> dict:
    """``{"model_stats": [...]}`` for (name, version, stats) of each model version."""
    models = []
    for name, version, s in stats:
        inference = {key: _duration(s.counts[key], s.ns[key]) for key in s.KEYS}
        inference.update(cache_hit=_duration(0, 0), cache_miss=_duration(0, 0))
        batches = []
        for rows in sorted(s.batches):
            count, input_ns, infer_ns, output_ns = s.batches[rows]
            batches.append(
                {
                    "batch_size": rows,
                    "compute_input": _duration(count, input_ns),
                    "compute_infer": _duration(count, infer_ns),
                    "compute_output": _duration(count, output_ns),
                }
            )
        models.append(
            {
                "name": name,
                "version": version,
                "last_inference": s.last_inference_ms,
                "inference_count": s.inference_count,
                "execution_count": s.execution_count,
                "inference_stats": inference,
                "response_stats": {},
                "batch_stats": batches,
                "memory_usage": [],
            }
        )
    return {"model_stats": models}
