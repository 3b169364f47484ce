"""The processing stages, independent of Faust: a batch of Kafka records in, Redis writes and outputs out.

:class:`IngestStage` handles the user-keyed events topic: decode and validate (invalid → dead letter),
event-time clocks, item-metadata enrichment, exposure filters, last-N sequences and user statistics,
and the first deliveries to forward to the item- and author-keyed repartition topics.
:class:`EntityStage` applies forwarded deliveries to item or author statistics, and
:class:`ItemMetaStage` stores item metadata. The Faust agents in :mod:`stream.app` are thin adapters.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import redis
from aiokafka.partitioner import DefaultPartitioner

from filters.events import Event, decode_event, decode_item
from infra import keys, metrics
from infra.errors import EventValidationError
from infra.settings import Settings
from stream.deliveries import Delivery, ForwardedDelivery, decode_forwarded_batch, encode_forwarded_batch
from stream.exposure_writer import ExposureWriter
from stream.watermarks import WatermarkStore
from stream.writers import EntityStatsWriter, UserStateWriter


@dataclass(frozen=True)
class Record:
    """One consumed Kafka message."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True)
class DeadLetter:
    """An invalid message with the reason it was rejected, bound for the dead-letter topic."""

    record: Record
    reason: str
    detail: str

    def headers(self) -> list[tuple[str, bytes]]:
        """Kafka headers carrying the reason and the source coordinates."""
        return [
            ("reason", self.reason.encode()),
            ("detail", self.detail[:1000].encode()),
            ("source_topic", self.record.topic.encode()),
            ("source_partition", str(self.record.partition).encode()),
            ("source_offset", str(self.record.offset).encode()),
        ]


#: Forwarded deliveries per repartition message (keeps messages far below Kafka's 1 MiB default).
MAX_FORWARDS_PER_MESSAGE = 1000


@dataclass
class StageOutput:
    """What a stage wants sent to Kafka after its Redis writes succeeded.

    Forwards are grouped per target partition of the repartition topics (chosen with the murmur2
    partitioner Faust and Kafka use for the item / author key) and sent as one message per group, in
    source order — far fewer Kafka sends than one message per event, with the same placement.
    """

    dead_letters: list[DeadLetter] = field(default_factory=list)
    by_item: dict[int, list[ForwardedDelivery]] = field(default_factory=dict)
    by_author: dict[int, list[ForwardedDelivery]] = field(default_factory=dict)

    def messages(self, which: Literal["item", "author"]) -> list[tuple[int, bytes]]:
        """(partition, value) of the repartition messages for ``which``."""
        groups = self.by_item if which == "item" else self.by_author
        return [
            (partition, encode_forwarded_batch(fwds[i : i + MAX_FORWARDS_PER_MESSAGE]))
            for partition, fwds in groups.items()
            for i in range(0, len(fwds), MAX_FORWARDS_PER_MESSAGE)
        ]


class _KeyPartitioner:
    """Where a murmur2 producer (Kafka's Java client, aiokafka, Faust) puts a key among n partitions."""

    def __init__(self, partitions: int) -> None:
        self._all = list(range(partitions))
        self._hash = DefaultPartitioner()
        self._cache: dict[str, int] = {}

    def __call__(self, key: str) -> int:
        p = self._cache.get(key)
        if p is None:
            if len(self._cache) > 100_000:
                self._cache.clear()
            p = self._cache[key] = self._hash(key.encode(), self._all, self._all)
        return p


def _decode_valid(records: Sequence[Record], out: StageOutput) -> list[tuple[Record, Event]]:
    valid: list[tuple[Record, Event]] = []
    for rec in records:
        try:
            valid.append((rec, decode_event(rec.value)))
        except EventValidationError as exc:
            out.dead_letters.append(DeadLetter(rec, exc.reason, exc.detail))
            metrics.EVENTS_INVALID.labels(reason=exc.reason).inc()
    return valid


class IngestStage:
    """User-keyed stage over the events topic (see module docstring)."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self._redis = client
        self._settings = settings
        self._clocks = WatermarkStore(
            client, settings.worker.app_id, settings.kafka.events_topic, settings.stats.allowed_lateness_ms
        )
        self._exposures = ExposureWriter(client, settings)
        self._users = UserStateWriter(client, settings)
        self._partition_of = _KeyPartitioner(settings.kafka.partitions)

    def process(self, records: Sequence[Record]) -> StageOutput:
        """Apply one batch (any mix of partitions, each in offset order) and return what to send."""
        out = StageOutput()
        valid = _decode_valid(records, out)
        if not valid:
            return out
        clocks = self._clocks.load(rec.partition for rec, _ in valid)
        meta = self._item_meta(ev for _, ev in valid if ev.category is None or ev.author_id is None)
        by_partition: dict[int, list[Delivery]] = defaultdict(list)
        impressions: dict[str, list[tuple[str, int]]] = defaultdict(list)
        for rec, ev in valid:
            late = clocks[rec.partition].observe(ev.ts, rec.offset)
            category, author = ev.category, ev.author_id
            if category is None or author is None:
                known = meta.get(ev.item_id, (None, None))
                category = category if category is not None else known[0]
                author = author if author is not None else known[1]
            by_partition[rec.partition].append(Delivery(rec.offset, ev, late, category, author))
            if ev.type == "impression":
                impressions[ev.user_id].append((ev.item_id, ev.ts))
        watermark = min(c.watermark for c in clocks.values())
        if impressions:
            metrics.BLOOM_ADDS.inc(self._exposures.add(impressions, watermark))
        for partition, deliveries in by_partition.items():
            result = self._users.write(partition, deliveries)
            for fwd in result.forwards():
                out.by_item.setdefault(self._partition_of(fwd.event.item_id), []).append(fwd)
                if fwd.author_id is not None:
                    out.by_author.setdefault(self._partition_of(fwd.author_id), []).append(fwd)
            result.record_guard_metrics()
        self._clocks.save(clocks)
        _observe_processed(ev for _, ev in valid)
        return out

    def _item_meta(self, events: Iterable[Event]) -> dict[str, tuple[str | None, str | None]]:
        items = sorted({ev.item_id for ev in events})
        if not items:
            return {}
        pipe = self._redis.pipeline(transaction=False)
        for item in items:
            pipe.hmget(keys.item_meta(item), "category", "author_id")
        found: dict[str, tuple[str | None, str | None]] = {}
        for item, (category, author) in zip(items, pipe.execute(), strict=True):
            if category is not None or author is not None:
                found[item] = (
                    None if category is None else category.decode(),
                    None if author is None else author.decode(),
                )
        return found


def _observe_processed(events: Iterable[Event]) -> None:
    now_ms = time.time() * 1000
    counts: dict[str, int] = defaultdict(int)
    newest = 0
    for ev in events:
        counts[ev.type] += 1
        newest = max(newest, ev.ts)
    for etype, n in counts.items():
        metrics.EVENTS_PROCESSED.labels(type=etype).inc(n)
    if newest and now_ms >= newest:
        metrics.FRESHNESS_SECONDS.labels(agent="ingest").observe((now_ms - newest) / 1000)


class EntityStage:
    """Item- or author-keyed stage over a repartition topic."""

    def __init__(self, client: redis.Redis, settings: Settings, kind: Literal["item", "author"]) -> None:
        self._kind: Literal["item", "author"] = kind
        self._writer = EntityStatsWriter(client, settings)

    def process(self, records: Sequence[Record]) -> StageOutput:
        """Apply one batch of forwarded deliveries to this stage's entity statistics."""
        out = StageOutput()
        deliveries: list[ForwardedDelivery] = []
        for rec in records:
            try:
                deliveries.extend(decode_forwarded_batch(rec.value or b""))
            except EventValidationError as exc:
                out.dead_letters.append(DeadLetter(rec, exc.reason, exc.detail))
                metrics.EVENTS_INVALID.labels(reason=exc.reason).inc()
        if deliveries:
            self._writer.write(self._kind, deliveries).record_guard_metrics()
        return out


class ItemMetaStage:
    """Stores item metadata (category, author, publish time) for enrichment; HSET is idempotent."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    def process(self, records: Sequence[Record]) -> StageOutput:
        """Validate and store one batch of item-metadata records."""
        out = StageOutput()
        pipe = self._redis.pipeline(transaction=False)
        for rec in records:
            try:
                item = decode_item(rec.value)
            except EventValidationError as exc:
                out.dead_letters.append(DeadLetter(rec, exc.reason, exc.detail))
                metrics.EVENTS_INVALID.labels(reason=exc.reason).inc()
                continue
            fields: dict[Any, Any] = {
                name: str(value)
                for name, value in (
                    ("category", item.category), ("author_id", item.author_id), ("publish_ts", item.publish_ts)
                )
                if value is not None
            }
            if fields:
                pipe.hset(keys.item_meta(item.item_id), mapping=fields)
        pipe.execute()
        return out
