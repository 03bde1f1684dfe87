"""What the server measures: per-version counters (:mod:`.stats`) and their Prometheus exposition."""
