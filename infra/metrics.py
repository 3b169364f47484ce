"""Every Prometheus collector of recstream, in one module (names are the SRE contract: docs/metrics.md lists them).

Collectors are module-level and labelled; processes expose them with :func:`serve`.

>>> EVENTS_PROCESSED.labels(type="click").inc()
>>> b"recstream_events_processed_total" in render()
True
"""

from __future__ import annotations

from prometheus_client import (
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)

# --- ingest / worker -------------------------------------------------------------------------------
EVENTS_PROCESSED = Counter(
    "recstream_events_processed", "Valid events processed by the worker", ["type"]
)
EVENTS_INVALID = Counter(
    "recstream_events_invalid", "Messages sent to the dead-letter topic", ["reason"]
)
BATCH_SIZE = Histogram(
    "recstream_batch_size", "Messages per processed batch", ["agent"],
    buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 2500, 5000),
)
PROCESSING_SECONDS = Histogram(
    "recstream_batch_processing_seconds", "Wall time to process one batch", ["agent"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
CONSUMER_LAG = Gauge(
    "recstream_consumer_lag_messages", "Highwater minus the next offset to process, per partition (the worker's own)",
    ["group", "topic", "partition"],
)
CONSUMER_LAG_SECONDS = Gauge(
    "recstream_consumer_lag_seconds", "Age of the oldest unprocessed record, per partition (0 when caught up)",
    ["group", "topic", "partition"],
)
GROUP_LAG = Gauge(
    "recstream_group_lag_messages", "End minus committed offset per partition, as `recstream lag --serve` reads it",
    ["group", "topic", "partition"],
)
GROUP_LAG_SECONDS = Gauge(
    "recstream_group_lag_seconds", "Age of the oldest unprocessed record per partition (`recstream lag --serve`)",
    ["group", "topic", "partition"],
)
KAFKA_UP = Gauge(
    "recstream_kafka_up", "1 when the last read of the group's offsets answered, 0 when Kafka did not "
    "(`recstream lag --serve`)",
)
EVENT_TIME_LAG = Gauge(
    "recstream_event_time_lag_seconds", "Now minus the newest event ts seen, per partition",
    ["topic", "partition"],
)
FRESHNESS_SECONDS = Histogram(
    "recstream_event_to_feature_seconds", "Wall time from event ts to its features being written",
    ["agent"], buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
)
STALE_WRITES_REFUSED = Counter(
    "recstream_stale_writes_refused",
    "Clock or join-checkpoint writes refused because Redis already holds a later position (a worker that lost "
    "the partition in a rebalance finishing its batch)", ["state"],
)
REPLAYED_SKIPPED = Counter(
    "recstream_replayed_events_skipped", "Events skipped by the replay guard (already applied)", ["stage"]
)
DUPLICATES_DROPPED = Counter(
    "recstream_duplicate_events_dropped", "Duplicate deliveries of one event_id dropped", ["stage"]
)
LATE_DROPPED = Counter(
    "recstream_late_events_dropped", "Events older than the watermark, left out of statistics", ["stage"]
)

REDIS_RETRIES = Counter(
    "recstream_redis_retries", "Batches retried because Redis was unreachable", ["agent"]
)

# --- exposure filters ------------------------------------------------------------------------------
BLOOM_ADDS = Counter("recstream_bloom_adds", "Impressions added to exposure filters")
BLOOM_CHECKS = Counter("recstream_bloom_checks", "Candidates checked against exposure filters")
BLOOM_FILTERED = Counter("recstream_bloom_filtered", "Candidates reported as seen and filtered out")
BLOOM_SLICES_PER_USER = Histogram(
    "recstream_bloom_slices_per_user", "Live (sub-)slices read per filter query",
    buckets=(1, 2, 5, 10, 20, 31, 40, 60, 100),
)
BLOOM_BYTES_PER_USER = Histogram(
    "recstream_bloom_bytes_per_user", "Bytes of live filter bits read per query",
    buckets=(256, 1024, 4096, 16384, 65536, 262144, 1048576),
)
BLOOM_ESTIMATED_FPR = Histogram(
    "recstream_bloom_estimated_fpr", "Per-query FPR estimated from the fill ratio of the live slices",
    buckets=(1e-5, 1e-4, 1e-3, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5),
)

# --- last-N sequences ------------------------------------------------------------------------------
SEQ_APPENDED = Counter("recstream_sequence_entries_appended", "Entries added to last-N sequences", ["action"])
SEQ_TRIMMED = Counter(
    "recstream_sequence_entries_trimmed", "Entries dropped from last-N sequences beyond their capacity", ["action"]
)

# --- windowed statistics ---------------------------------------------------------------------------
TILE_UPDATES = Counter("recstream_tile_updates", "Tile counter increments", ["kind"])

# --- the write path --------------------------------------------------------------------------------
SCRIPT_CALLS = Counter(
    "recstream_write_script_calls", "Lua calls made by the write path (one per shard and batch)", ["stage"]
)
WRITE_SECONDS = Histogram(
    "recstream_write_seconds", "Wall time of one batch's Redis writes (every chunk and pipeline)", ["stage"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)

# --- the label join --------------------------------------------------------------------------------
JOIN_SAMPLES = Counter(
    "recstream_join_samples", "Samples emitted to the samples topic (impression: one per label set, or none)",
    ["kind", "label"],
)
JOIN_ACTIONS = Counter(
    "recstream_join_actions", "Actions by join outcome (joined, late = every window it could join had closed, "
    "no_impression = waited and none came)", ["action", "outcome"],
)
JOIN_IMPRESSIONS = Counter(
    "recstream_join_impressions", "Impressions not sampled (late = window closed on arrival, downsampled)",
    ["outcome"],
)
JOIN_OPEN = Gauge("recstream_join_open", "Open join state of this worker's partitions", ["kind"])
JOIN_STATE_BYTES = Gauge("recstream_join_state_bytes", "Checkpointed join state of this worker's partitions")
JOIN_EMIT_DELAY = Histogram(
    "recstream_join_emit_delay_seconds",
    "Wall time from an impression's ts to its sample's emission (a sample: at most 32 per batch)", ["kind"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 7200, 14400),
)

# --- serving ---------------------------------------------------------------------------------------
SERVING_SECONDS = Histogram(
    "recstream_serving_seconds", "FeatureClient call latency", ["method"],
    buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1),
)

# --- freshness canaries (recstream canary) -----------------------------------------------------------
CANARY_FRESHNESS = Histogram(
    "recstream_canary_freshness_seconds", "Canary event produced -> readable through the serving client",
    ["family"], buckets=(0.05, 0.1, 0.25, 0.5, 1, 1.5, 2, 3, 5, 10, 30),
)
CANARY_MISSES = Counter(
    "recstream_canary_misses", "Canary events not readable within the canary's timeout", ["family"],
)

# --- trainer (online learning) ---------------------------------------------------------------------
TRAINER_SAMPLES = Counter(
    "recstream_trainer_samples", "Samples read by the trainer, by kind and what happened to them",
    ["kind", "outcome"],  # outcome: trained, evaluated, duplicate, invalid, heartbeat (kind canary)
)
TRAINER_LOSS = Gauge("recstream_trainer_loss", "In-batch softmax loss of the last training step")
TRAINER_PUBLISH_SECONDS = Histogram(
    "recstream_trainer_publish_seconds", "Wall time of one publish (touched rows + manifest, one round trip)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
TRAINER_PUBLISHED_ROWS = Counter(
    "recstream_trainer_published_rows", "Rows published into the current model version", ["family"],
)
TRAINER_LAST_PUBLISH = Gauge(
    "recstream_trainer_last_publish_timestamp_seconds", "Wall time of the last publish (age = now - this)",
)
TRAINER_EVAL = Gauge(
    "recstream_trainer_prequential", "Prequential metric over the sliding window (test, then train)", ["metric"],
)
EMBEDDING_ROWS = Gauge("recstream_embedding_rows", "Own rows held per embedding table", ["table"])
EMBEDDING_EVENTS = Counter(
    "recstream_embedding_events", "Embedding table events (admission, eviction, hit, miss, full)",
    ["table", "event"],
)


def catalogue() -> list[tuple[str, str, tuple[str, ...], str]]:
    """``(exposed name, type, labels, help)`` of every collector of this module (docs/metrics.md lists
    them; a test keeps the two equal)."""
    out = []
    for collector in list(globals().values()):
        if isinstance(collector, Counter | Gauge | Histogram):
            kind = type(collector).__name__.lower()
            name = collector._name + ("_total" if kind == "counter" else "")
            out.append((name, kind, tuple(collector._labelnames), collector._documentation))
    return sorted(out)


def render() -> bytes:
    """The current exposition text of every collector (what ``/metrics`` serves)."""
    return generate_latest(REGISTRY)


def serve(port: int, setting: str, addr: str = "127.0.0.1") -> None:
    """Expose ``/metrics`` on ``addr:port`` from a background thread; port 0 means no endpoint. A port in
    use is one :class:`~infra.errors.InfraError` naming ``setting`` (the env var or option that sets it)."""
    if not port:
        return
    try:
        start_http_server(port, addr=addr)
    except OSError as exc:
        from infra.errors import InfraError

        msg = f"cannot serve /metrics on {addr}:{port} ({exc.strerror}); set {setting} to a free port (0 = none)"
        raise InfraError(msg) from None
