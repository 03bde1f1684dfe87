"""Dynamic batching: the pure rules (`policy`) and the per-version queue with its instances (`batcher`)."""

from service.batching.batcher import BatchObserver, BatchTiming, DynamicBatcher, PendingRequest
from service.batching.policy import DEFAULT_MAX_QUEUE_SIZE, BatchPolicy, policy_from_config

__all__ = [
    "DEFAULT_MAX_QUEUE_SIZE",
    "BatchObserver",
    "BatchPolicy",
    "BatchTiming",
    "DynamicBatcher",
    "PendingRequest",
    "policy_from_config",
]
