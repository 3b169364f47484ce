"""``recstream trainer``: samples topic → dedup → test → train → publish every P seconds → commit.

The loop (one process, one consumer group ``learning.group``):

1. read records from ``recstream-samples``; drop a sample whose id was trained within the dedup horizon;
2. **test**: impression samples are scored (AUC / logloss of clicked vs not), and up to
   ``learning.eval_per_batch`` positives per training batch are ranked against the item catalogue
   (recall@10/50, MRR) — all with the model as it stands, before any training on them;
3. **train**: positives in batches of ``learning.batch_size``, only the ID embeddings (towers frozen);
4. every ``learning.publish_every_s``: train what is buffered, assert the towers' checksum still equals
   the manifest's, write the touched rows, the manifest and the trained sample ids in one round trip,
   then commit the offsets read. A SIGKILL loses only unpublished training, whose samples are read again.

When ``rs2:model:current`` names a newer version (a full update, a rollback), the trainer restarts its
incremental chain from that version's checkpoint at the next publish.
"""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path

import msgspec
import numpy as np
import redis

from filters.labels import Sample
from filters.manifest import Manifest
from filters.model_store import ModelStore
from filters.sample_records import decode_samples
from infra import metrics
from infra.clock import Clock, now_ms
from infra.errors import ModelError
from infra.gc_tuning import tune_gc
from infra.keys import trainer_seen
from infra.redis_client import check_layout, connect
from infra.settings import Settings
from infra.topics import ensure_topics
from online_learning.dedup import SampleDedup
from online_learning.evaluation import MetricsLog, Prequential
from online_learning.publish import ModelPublisher
from online_learning.source import SampleRecord, SampleSource
from online_learning.versions import ensure_version, resume

__all__ = ["Trainer", "records_per_poll", "run_trainer"]

_log = logging.getLogger("recstream.trainer")
_SAFETY_TTL_MS = 86_400_000
_EVAL_CHUNK = 8192
_SAMPLES_PER_POLL = 5000
_TABLE_EVENTS = (("admissions", "admission"), ("evictions", "eviction"), ("hits", "hit"), ("misses", "miss"),
                 ("full", "full"))


class Trainer:
    """The incremental trainer over one :class:`SampleSource` (see the module docstring)."""

    def __init__(self, settings: Settings, client: redis.Redis, source: SampleSource, clock: Clock = now_ms,
                 metrics_log: Path | None = None) -> None:
        self.settings, self.cfg, self.source, self.clock = settings, settings.learning, source, clock
        self.store = ModelStore(client, settings.redis.shards)
        self.publisher = ModelPublisher(self.store, self.cfg.keep_versions)
        self.version = ensure_version(settings, self.store)
        self.learner, self.manifest = resume(settings, self.store, self.version)
        self.dedup = SampleDedup(self.cfg.dedup_horizon_ms)
        self._persisted = self._load_seen()
        self.evaluation = Prequential(self.cfg.eval_window)
        self.log = MetricsLog(metrics_log) if metrics_log else None
        self.offsets: dict[int, int] = {}
        self.through: dict[int, int] = dict(self.manifest.through_ms)  # partition -> newest record ts read
        self.buffer: list[Sample] = []  # positives waiting for a full training batch
        self.impressions: list[Sample] = []  # impression samples waiting to be scored
        self.last_publish = clock()
        self._table_counts: dict[tuple[str, str], int] = {}  # IdTable counters already exported

    def _load_seen(self) -> set[int]:
        pattern = trainer_seen(self.cfg.group, "*")
        buckets = {int(k.rsplit(b":", 1)[1]): k for k in self.store.redis.scan_iter(match=pattern, count=1000)}
        pipe = self.store.redis.pipeline(transaction=False)
        for key in buckets.values():
            pipe.lrange(key, 0, -1)
        self.dedup.load(dict(zip(buckets, pipe.execute(), strict=True)))
        return set(buckets)

    # --- one poll ------------------------------------------------------------------------------------
    def handle(self, records: list[SampleRecord]) -> None:
        """Dedup, test and train the samples of ``records`` (in read order); remember their offsets."""
        impressions = self.impressions
        for rec in records:
            self.offsets[rec.partition] = rec.offset + 1
            try:
                samples = decode_samples(rec.value)
            except msgspec.DecodeError:
                metrics.TRAINER_SAMPLES.labels(kind="unknown", outcome="invalid").inc()
                continue
            through = self.through.get(rec.partition, 0)
            for sample in samples:
                through = max(through, sample.ts)
                if sample.kind == "canary":  # a freshness heartbeat: counted in ``through``, never trained
                    metrics.TRAINER_SAMPLES.labels(kind="canary", outcome="heartbeat").inc()
                elif not self.dedup.fresh(sample.sample_id, sample.ts):
                    metrics.TRAINER_SAMPLES.labels(kind=sample.kind, outcome="duplicate").inc()
                else:
                    (self.buffer if sample.kind == "positive" else impressions).append(sample)
            if through:
                self.through[rec.partition] = through
        if len(impressions) >= _EVAL_CHUNK:
            self._evaluate_impressions()
        while len(self.buffer) >= self.cfg.batch_size:
            self._train(self.buffer[: self.cfg.batch_size])
            del self.buffer[: self.cfg.batch_size]

    def _evaluate_impressions(self) -> None:
        """Score the buffered impression samples (in chunks: calibration costs per call, not per sample)."""
        batch, self.impressions = self.impressions, []
        if batch:
            labels = np.array([(s.labels or {}).get("click", 0) for s in batch], np.float64)
            self.evaluation.add_impressions(self.learner.score_impressions(batch), labels)
            metrics.TRAINER_SAMPLES.labels(kind="impression", outcome="evaluated").inc(len(batch))

    def _train(self, positives: list[Sample]) -> None:
        probe = positives[: self.cfg.eval_per_batch]
        if probe and len(self.learner.catalogue_ids):
            self.evaluation.add_ranking(self.learner.rank_positives(probe), n_items=len(self.learner.catalogue_ids))
        metrics.TRAINER_LOSS.set(self.learner.train(positives))
        metrics.TRAINER_SAMPLES.labels(kind="positive", outcome="trained").inc(len(positives))

    # --- publishing --------------------------------------------------------------------------------
    def due(self) -> bool:
        """True once ``learning.publish_every_s`` has passed since the last publish."""
        return self.clock() - self.last_publish >= self.cfg.publish_every_s * 1000

    def publish(self) -> int:
        """Train the buffer, publish touched rows + manifest + trained ids, commit offsets; returns rows."""
        started = time.perf_counter()
        self._evaluate_impressions()
        if self.buffer:
            self._train(self.buffer)
            self.buffer = []
        m = self.learner.model
        if m.dense_checksum() != self.manifest.dense_checksum:
            msg = f"the towers of {self.version} changed during incremental training (checksum mismatch)"
            raise ModelError(msg)
        self.learner.expire(self.learner.newest_ts)
        rows = self.learner.touched_rows()
        self.manifest = self._next_manifest(len(rows.users.ids), len(rows.items.ids))
        seen = {trainer_seen(self.cfg.group, b): blob for b, blob in self.dedup.take_new().items()}
        self.publisher.publish_delta(self.manifest, rows, seen, self.cfg.dedup_horizon_ms + _SAFETY_TTL_MS)
        self._persisted |= {int(k.rsplit(":", 1)[1]) for k in seen}
        self._drop_old_seen()
        self.source.commit(self.offsets)
        self.last_publish = self.clock()
        self.learner.refresh_catalogue()
        self._observe(rows.users.ids, rows.items.ids, time.perf_counter() - started)
        self._follow_pointer()
        return len(rows)

    def _next_manifest(self, users: int, items: int) -> Manifest:
        t = self.learner.tables
        return msgspec.structs.replace(
            self.manifest, last_publish_ms=self.clock(), publishes=self.manifest.publishes + 1,
            samples_seen=self.learner.trained, newest_event_ms=self.learner.newest_ts, through_ms=dict(self.through),
            user_rows=len(t.users), item_rows=len(t.items), evaluation=self.evaluation.snapshot())

    def _drop_old_seen(self) -> None:
        live = self.dedup.live_buckets(self.learner.newest_ts)
        old = [b for b in self._persisted if b < live.start]
        if old:
            self.store.redis.delete(*(trainer_seen(self.cfg.group, b) for b in old))
            self._persisted.difference_update(old)

    def _follow_pointer(self) -> None:
        current = self.store.current()
        if current is not None and current != self.version:
            _log.info("model version %s is current: restarting the incremental chain from it", current)
            self.version = current
            self.learner, self.manifest = resume(self.settings, self.store, current)
            self._table_counts.clear()

    def _observe(self, users: object, items: object, seconds: float) -> None:
        metrics.TRAINER_PUBLISH_SECONDS.observe(seconds)
        metrics.TRAINER_PUBLISHED_ROWS.labels(family="user").inc(len(users))  # type: ignore[arg-type]
        metrics.TRAINER_PUBLISHED_ROWS.labels(family="item").inc(len(items))  # type: ignore[arg-type]
        metrics.TRAINER_LAST_PUBLISH.set(self.clock() / 1000)
        snapshot = self.manifest.evaluation
        for name, value in snapshot.items():
            if value is not None:
                metrics.TRAINER_EVAL.labels(metric=name).set(value)
        for name, table in (("user", self.learner.tables.users), ("item", self.learner.tables.items),
                            ("category", self.learner.tables.categories)):
            metrics.EMBEDDING_ROWS.labels(table=name).set(len(table))
            stats = table.stats
            for field, event in _TABLE_EVENTS:
                now, before = getattr(stats, field), self._table_counts.get((name, field), 0)
                if now > before:
                    metrics.EMBEDDING_EVENTS.labels(table=name, event=event).inc(now - before)
                self._table_counts[(name, field)] = now
        if self.log is not None:
            self.log.write({"wall_ms": self.clock(), "event_ms": self.learner.newest_ts, "version": self.version,
                            "trained": self.learner.trained, **snapshot})


def records_per_poll(settings: Settings) -> int:
    """Records per poll of the samples topic for ~5,000 samples: a batched record carries up to
    ``join.samples_per_record`` of them (bounded memory per poll).

    >>> from infra.settings import load_settings
    >>> [records_per_poll(load_settings(join={"samples_per_record": n})) for n in (200, 1)]
    [25, 5000]
    """
    return max(8, _SAMPLES_PER_POLL // settings.join.samples_per_record)


def run_trainer(settings: Settings, until_idle_s: float | None = None, metrics_log: Path | None = None) -> Trainer:
    """``recstream trainer``: run until SIGTERM / SIGINT, or until ``until_idle_s`` seconds pass without a
    record (then publish once more and return)."""
    client = connect(settings.redis.effective_url, cluster=settings.redis.cluster)
    check_layout(client, settings.redis.shards)
    ensure_topics(settings)
    metrics.serve(settings.learning.metrics_port, "RECSTREAM_LEARNING_METRICS_PORT")
    stopping: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: stopping.append(signum))
    source = SampleSource(settings)
    trainer = Trainer(settings, client, source, metrics_log=metrics_log)
    tune_gc(settings.learning.gc_young)  # after start-up (torch, the resumed tables): frozen out of every pass
    last_record = time.monotonic()
    per_poll = records_per_poll(settings)
    try:
        while not stopping:
            records = source.poll(per_poll, timeout_s=0.2)
            if records or not source.assigned:
                trainer.handle(records)
                last_record = time.monotonic()
            elif until_idle_s is not None and time.monotonic() - last_record > until_idle_s:
                break  # an empty poll, and none with records for until_idle_s: caught up
            if trainer.due():
                trainer.publish()
        trainer.publish()
    finally:
        source.close()
    return trainer
