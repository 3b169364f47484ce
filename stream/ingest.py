"""The processing stages, independent of Faust: a batch of Kafka records in, Redis writes and outputs out.

:class:`IngestStage` handles the user-keyed events topic: decode and validate every event of every record
(single-event or batched; invalid → dead letter, alone), event-time clocks, item-metadata enrichment,
then one :class:`~stream.writers.UserBatchWriter` pipeline for exposure filters, last-N sequences and
user statistics, and one :class:`~stream.writers.EntityBatchWriter` pipeline that applies the batch's
first deliveries to item and author statistics; the label join (:mod:`stream.join_stage`) then turns
the batch's first deliveries into samples. :class:`ItemMetaStage` stores item metadata. The Faust
agents in :mod:`stream.app` are thin adapters.

A stage's :meth:`process` returns a :class:`StageOutput`; the caller sends its dead letters, waits until
the broker acknowledged them, then calls :meth:`StageOutput.commit` (it waits for the samples'
acknowledgements, checkpoints the join, persists the event-time clocks), and only then lets Faust commit
the offsets: Redis → dead letters and samples → join checkpoint → watermark → offsets
(docs/architecture.md).
"""

from __future__ import annotations

import functools
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import redis

from filters.events import Event, decode_item, decode_record, record_elements
from infra import metrics
from infra.clock import Clock, now_ms
from infra.errors import EventValidationError, RedisRollbackError, SourceGapError
from infra.keys import KeyLayout, watermark
from infra.redis_client import write_packed
from infra.settings import Settings
from stream.batching import KeyPartitioner
from stream.deliveries import Delivery
from stream.join_stage import JoinStage, KafkaSampleSink, SampleSink
from stream.watermarks import NO_TS, PartitionClock, WatermarkStore
from stream.write_plan import Prepared, split_batch
from stream.writers import EntityBatchWriter, UserBatchWriter


@dataclass(frozen=True)
class Record:
    """One consumed Kafka message."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int = 0  # the record's Kafka timestamp (0 = unknown: no future_ts check)


@dataclass(frozen=True)
class DeadLetter:
    """An invalid message (or one bad event of a batched record) with the reason it was rejected."""

    record: Record
    reason: str
    detail: str
    batch_index: int | None = None
    value: bytes | None = None
    """The bytes to dead-letter: the bad element of a batched record; ``None`` = the whole record."""

    def headers(self) -> list[tuple[str, bytes]]:
        """Kafka headers carrying the reason and the source coordinates."""
        out = [
            ("reason", self.reason.encode()),
            ("detail", self.detail[:1000].encode()),
            ("source_topic", self.record.topic.encode()),
            ("source_partition", str(self.record.partition).encode()),
            ("source_offset", str(self.record.offset).encode()),
        ]
        if self.batch_index is not None:
            out.append(("batch_index", str(self.batch_index).encode()))
        return out

    @property
    def payload(self) -> bytes | None:
        """The dead letter's value."""
        return self.record.value if self.value is None else self.value


def _noop() -> None:
    return None


@dataclass
class StageOutput:
    """What a stage wants sent to Kafka after its Redis writes succeeded, and what to do once it was:
    ``commit`` persists the event-time clocks — call it only after the broker acknowledged every dead
    letter."""

    dead_letters: list[DeadLetter] = field(default_factory=list)
    commit: Callable[[], None] = _noop


def _dead(out: StageOutput, letter: DeadLetter) -> None:
    out.dead_letters.append(letter)
    metrics.EVENTS_INVALID.labels(reason=letter.reason).inc()


def decode_batch(
    records: Sequence[Record], partition_of: KeyPartitioner, out: StageOutput
) -> list[tuple[Record, int, Event]]:
    """Every valid event of ``records`` as ``(record, index in record, event)``, in source order.

    Bad events (and whole records that are not JSON) become dead letters in ``out``; so does an event
    whose user does not belong to the record's partition (``wrong_partition``: its order and dedup
    would be undefined).
    """
    valid: list[tuple[Record, int, Event]] = []
    for rec in records:
        decoded = decode_record(rec.value)
        for err in decoded.errors:
            value = err.raw if err.batch_index is not None else None
            _dead(out, DeadLetter(rec, err.error.reason, err.error.detail, err.batch_index, value))
        elements: list[bytes] | None = None  # split only when an element must be dead-lettered
        for index, ev in decoded.events:
            if partition_of(ev.user_id) != rec.partition:
                detail = f"user {ev.user_id!r} belongs to partition {partition_of(ev.user_id)}, not {rec.partition}"
                if decoded.batched and elements is None:
                    elements = record_elements(rec.value or b"[]")
                raw = elements[index] if elements is not None else None
                _dead(out, DeadLetter(rec, "wrong_partition", detail, index if decoded.batched else None, raw))
                continue
            valid.append((rec, index, ev))
    return valid


class _Attempt:
    """One try at writing a batch. Once one of its pipelines failed, its later pipelines (already queued
    on the I/O thread) are not sent but raise the same error: a retry of the batch must never find a
    later chunk applied over an earlier chunk that was not (the guards would take the earlier one for a
    replay)."""

    def __init__(self) -> None:
        self.error: BaseException | None = None

    def run(self, send: Callable[[Prepared], list[Any]], prepared: Prepared) -> list[Any]:
        if self.error is not None:
            raise self.error
        try:
            return send(prepared)
        except BaseException as exc:
            self.error = exc
            raise


class IngestStage:
    """User-keyed stage over the events topic (see module docstring)."""

    def __init__(self, client: redis.Redis, settings: Settings, clock: Clock = now_ms,
                 samples: SampleSink | None = None) -> None:
        self._redis = client
        self._settings = settings
        self._clock = clock
        self._keys = KeyLayout(settings.redis.shards)
        self._join = (JoinStage(client, settings, samples or KafkaSampleSink(settings), clock)
                      if settings.join.enabled else None)
        self._clocks = WatermarkStore(
            client, settings.worker.app_id, settings.kafka.events_topic, settings.stats.allowed_lateness_ms, clock
        )
        self._users = UserBatchWriter(client, settings)
        self._entities = EntityBatchWriter(client, settings)
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recstream-redis")
        self._partition_of = KeyPartitioner(settings.kafka.partitions)
        self._saved_next: dict[int, int] = {}  # partition -> the next_offset this process last saved

    def process(self, records: Sequence[Record]) -> StageOutput:
        """Apply one batch (any mix of partitions, each in offset order) and return what to send."""
        out = StageOutput()
        valid = decode_batch(records, self._partition_of, out)
        clocks = self._clocks.load({rec.partition for rec in records})
        self._check_not_rolled_back(clocks)
        self._check_no_gap(clocks, records)
        if not valid:
            self._advance(clocks, records)
            out.commit = functools.partial(self._save, clocks)
            return out
        persisted = {p: (c.offset, c.index) for p, c in clocks.items()}
        meta = self._item_meta(ev for _, _, ev in valid if ev.category is None or ev.author_id is None)
        batch: dict[int, list[Delivery]] = defaultdict(list)
        for rec, index, ev in valid:
            clock = clocks[rec.partition]
            if clock.covers(rec.offset, index):
                continue  # applied (user, item and author shards) and inside the persisted clock before a crash
            if self._out_of_range(rec, index, ev, clock, out):
                continue
            watermark = clock.watermark
            late = clock.observe(ev.ts, rec.offset, index)
            category, author = ev.category, ev.author_id
            if category is None or author is None:
                known = meta.get(ev.item_id, (None, None))
                category = category if category is not None else known[0]
                author = author if author is not None else known[1]
            batch[rec.partition].append(Delivery(rec.offset, ev, late, category, author, index, watermark))
        started = time.perf_counter()
        join = self._join
        if join is None:
            self._write(batch, clocks)
        else:
            join.begin(persisted)
            try:
                self._write(batch, clocks, join)
                commit_join = join.finish()
            except BaseException:
                join.abort()
                raise
        metrics.WRITE_SECONDS.labels(stage="ingest").observe(time.perf_counter() - started)
        self._advance(clocks, records)
        if join is None:
            out.commit = functools.partial(self._save, clocks)
        else:

            def commit() -> None:
                commit_join()
                self._save(clocks)

            out.commit = commit
        self._observe_processed(ev for _, _, ev in valid)
        return out

    def _out_of_range(self, rec: Record, index: int, ev: Event, clock: PartitionClock, out: StageOutput) -> bool:
        """Dead-letter an event from the future (ahead of its record's timestamp) or older than every feature
        horizon behind its partition's clock; both rules depend on the partition's prefix only (replayable)."""
        cfg = self._settings.worker
        if cfg.max_future_ms and rec.timestamp_ms and ev.ts > rec.timestamp_ms + cfg.max_future_ms:
            reason, detail = "future_ts", f"ts {ev.ts} is ahead of its record's timestamp {rec.timestamp_ms}"
        elif cfg.max_age_ms and clock.max_ts != NO_TS and ev.ts < clock.max_ts - cfg.max_age_ms:
            reason, detail = "too_old", f"ts {ev.ts} is beyond every feature horizon (partition at {clock.max_ts})"
        else:
            return False
        batched = (rec.value or b"").lstrip()[:1] == b"["
        raw = record_elements(rec.value or b"[]")[index] if batched else None
        _dead(out, DeadLetter(rec, reason, detail, index if batched else None, raw))
        return True

    @staticmethod
    def _advance(clocks: dict[int, PartitionClock], records: Sequence[Record]) -> None:
        """Move each partition's ``next_offset`` past the batch's records (valid or dead-lettered)."""
        for rec in records:
            clock = clocks[rec.partition]
            clock.next_offset = max(clock.next_offset, rec.offset + 1)

    def _save(self, clocks: dict[int, PartitionClock]) -> None:
        self._clocks.save(clocks)
        self._saved_next.update((p, c.next_offset) for p, c in clocks.items())

    def _check_not_rolled_back(self, clocks: dict[int, PartitionClock]) -> None:
        """Raise :class:`RedisRollbackError` when Redis holds an older position than this process saved."""
        for p, clock in clocks.items():
            saved = self._saved_next.get(p)
            if saved is not None and clock.next_offset < saved:
                topic = self._settings.kafka.events_topic
                msg = (f"Redis went back in time: it has applied {topic}[{p}] up to offset {clock.next_offset}, "
                       f"but this worker had saved {saved} (Redis lost acknowledged writes); stopping — a restarted "
                       f"worker resumes from what Redis applied")
                raise RedisRollbackError(msg)

    def _check_no_gap(self, clocks: dict[int, PartitionClock], records: Sequence[Record]) -> None:
        """Raise :class:`SourceGapError` when a partition's batch starts past Redis's ``next`` offset: the
        records in between were never applied, and applying this batch would cover them for good."""
        if not self._settings.worker.gap_check:
            return
        first: dict[int, int] = {}
        for rec in records:
            first[rec.partition] = min(first.get(rec.partition, rec.offset), rec.offset)
        for p, offset in first.items():
            clock = clocks[p]
            if (clock.offset >= 0 or clock.next_offset > 0) and offset > clock.next_offset:
                topic = self._settings.kafka.events_topic
                msg = (f"{topic}[{p}]: this batch starts at offset {offset} but Redis has applied only up to "
                       f"{clock.next_offset}: records {clock.next_offset}..{offset - 1} were never applied; stopping "
                       f"— a restarted worker resumes from what Redis applied")
                raise SourceGapError(msg)

    def _write(self, batch: dict[int, list[Delivery]], clocks: dict[int, PartitionClock],
               join: JoinStage | None = None) -> None:
        """Write the batch chunk by chunk, keeping Redis busy while this thread works: the next chunks'
        user-shard pipelines are queued before chunk k's item/author pipeline is even prepared, and the
        label join of chunk k's first deliveries runs while Redis applies them (the join is Python, the
        writes are Redis: on two cores they overlap instead of taking turns).

        The I/O thread runs pipelines one at a time in submission order, so every shard sees a source
        partition's positions in order; chunk k's entity pipeline follows its user pipeline (it needs its
        statuses). A crash between them is a replay: the user shards answer ``R`` and the entity guards
        apply what they had not seen. The join takes each chunk's first deliveries
        (:meth:`~stream.writers.UserWriteResult.join_deliveries`) per partition in order and closes the
        windows the chunk's watermarks reached, then those of the batch's watermarks (``clocks``, final once
        the batch's events are observed) before the last entity writes are awaited.
        """
        users, entities, io, attempt = self._users, self._entities, self._io, _Attempt()
        watermarks = {p: c.watermark for p, c in clocks.items()}
        chunks = split_batch(batch, self._settings.worker.write_chunk_events)
        ahead = 2  # user pipelines in flight
        inflight: list[tuple[Prepared, Future[list[Any]]]] = []

        def queue_user(k: int) -> None:
            if k < len(chunks):
                prepared = users.prepare(chunks[k], watermarks)
                inflight.append((prepared, io.submit(attempt.run, users.send, prepared)))

        for k in range(min(ahead, len(chunks))):
            queue_user(k)
        entity_jobs: list[tuple[Prepared, Future[list[Any]]]] = []
        for k, chunk in enumerate(chunks):
            prepared, sent = inflight.pop(0)
            result = users.finish(prepared, sent.result())
            queue_user(k + ahead)
            result.record_metrics(chunk)
            chunk_joined = result.join_deliveries(chunk)
            entity_prepared = entities.prepare({p: [d for d, log_only in pairs if not log_only]
                                                for p, pairs in chunk_joined.items()})
            entity_jobs.append((entity_prepared, io.submit(attempt.run, entities.send, entity_prepared)))
            if join is not None:  # closes what the chunk's watermarks reached (the last delivery's is one)
                join.add(chunk_joined, {p: deliveries[-1].watermark for p, deliveries in chunk.items() if deliveries})
            while entity_jobs and entity_jobs[0][1].done():
                self._finish_entities(*entity_jobs.pop(0))
        if join is not None:
            join.close(clocks)
        for job, done in entity_jobs:
            self._finish_entities(job, done)

    def _finish_entities(self, job: Prepared, done: Future[list[Any]]) -> None:
        for res in self._entities.finish(job, done.result()):
            res.record_metrics()

    def flush_idle(self) -> Callable[[], None] | None:
        """The label join's idle flush (``join.idle_flush_s``; off at 0): the commit of the samples it emitted,
        or None. Call it between batches, never while :meth:`process` runs."""
        idle = self._settings.join.idle_flush_s
        return self._join.flush_idle(idle) if self._join is not None and idle > 0 else None

    def _item_meta(self, events: Iterable[Event]) -> dict[str, tuple[str | None, str | None]]:
        items = sorted({ev.item_id for ev in events})
        if not items:
            return {}
        # one round trip packed by hiredis: a redis-py pipeline costs ~2x as much Python per HMGET here
        meta_key = self._keys.item_meta
        replies = write_packed(self._redis, [("HMGET", meta_key(i), "category", "author_id") for i in items])
        found: dict[str, tuple[str | None, str | None]] = {}
        for item, (category, author) in zip(items, replies, strict=True):
            if category is not None or author is not None:
                found[item] = (
                    None if category is None else category.decode(),
                    None if author is None else author.decode(),
                )
        return found

    def _observe_processed(self, events: Iterable[Event]) -> None:
        counts: dict[str, int] = defaultdict(int)
        newest = 0
        for ev in events:
            counts[ev.type] += 1
            newest = max(newest, ev.ts)
        for etype, n in counts.items():
            metrics.EVENTS_PROCESSED.labels(type=etype).inc(n)
        now = self._clock()
        if newest and now >= newest:
            metrics.FRESHNESS_SECONDS.labels(agent="ingest").observe((now - newest) / 1000)


class ItemMetaStage:
    """Stores item metadata (category, author, publish time) for enrichment; HSET is idempotent."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self._redis = client
        self._keys = KeyLayout(settings.redis.shards)
        self._group, self._topic = settings.worker.app_id, settings.kafka.items_topic

    def process(self, records: Sequence[Record]) -> StageOutput:
        """Validate and store one batch of item-metadata records."""
        out = StageOutput()
        pipe = self._redis.pipeline(transaction=False)
        for rec in records:
            try:
                item = decode_item(rec.value)
            except EventValidationError as exc:
                _dead(out, DeadLetter(rec, exc.reason, exc.detail))
                continue
            fields: dict[Any, Any] = {
                name: str(value)
                for name, value in (
                    ("category", item.category), ("author_id", item.author_id), ("publish_ts", item.publish_ts)
                )
                if value is not None
            }
            if fields:
                pipe.hset(self._keys.item_meta(item.item_id), mapping=fields)
        nexts: dict[int, int] = {}
        for rec in records:
            nexts[rec.partition] = max(nexts.get(rec.partition, 0), rec.offset + 1)
        for p, nxt in nexts.items():  # last in the pipeline: Redis holds the metadata of every record before it
            pipe.hset(watermark(self._group, self._topic, p), "next", nxt)
        pipe.execute()
        return out
