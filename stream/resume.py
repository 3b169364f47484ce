"""Resume from the offsets Redis says were applied, not from Kafka's commits.

The worker persists, after each batch's writes and in the same Redis as the features, the next offset to
read of every partition it processed (``next`` in the partition's watermark hash, :mod:`stream.watermarks`),
and it commits offsets to Kafka only after that. So Kafka's committed offset can be ahead of Redis's
``next`` only when Redis lost writes it had acknowledged (``appendfsync everysec`` and a machine crash,
a restore from an older snapshot) or lost its data entirely. Before Faust starts, :func:`reconcile`
compares the two for every partition of the worker's source topics and moves the consumer group back
to what Redis applied (to the earliest retained offset where Redis knows nothing of a committed
partition): the lost events are read again, and the per-entity position guards make every replayed
event that did survive count once. :func:`rewind_plan` is the pure rule.

While the worker runs, :class:`~stream.ingest.IngestStage` notices a Redis whose ``next`` went backwards
under it and stops the worker (:class:`~infra.errors.RedisRollbackError`), whose restart reconciles.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from concurrent.futures import TimeoutError as FutureTimeout

import redis
from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]

from infra import keys
from infra.errors import KafkaError
from infra.kafka_log import client_config
from infra.settings import Settings
from infra.topic_reader import read_between
from infra.topics import CommittedOffsets, transient
from stream.ingest import ItemMetaStage, Record

__all__ = ["applied_offsets", "reconcile", "rewind_plan"]

TP = tuple[str, int]
_log = logging.getLogger("recstream.resume")


def rewind_plan(committed: Mapping[TP, int | None], applied: Mapping[TP, int | None],
                earliest: Mapping[TP, int]) -> dict[TP, int]:
    """The partitions to move back, and where to: Redis's ``next`` where Kafka committed beyond it, the
    earliest retained offset where Redis has nothing for a partition Kafka committed past that.

    >>> rewind_plan({("ev", 0): 90, ("ev", 1): 50, ("ev", 2): 40, ("ev", 3): None},
    ...             {("ev", 0): 70, ("ev", 1): 50, ("ev", 2): None, ("ev", 3): None},
    ...             {("ev", 0): 0, ("ev", 1): 0, ("ev", 2): 10, ("ev", 3): 0})
    {('ev', 0): 70, ('ev', 2): 10}
    """
    plan: dict[TP, int] = {}
    for tp, done in committed.items():
        if done is None:
            continue  # never committed: the consumer starts from the earliest offset anyway
        redis_next = applied.get(tp)
        target = earliest.get(tp, 0) if redis_next is None else redis_next
        if target < done:
            plan[tp] = target
    return plan


def applied_offsets(client: redis.Redis, group: str, tps: list[TP]) -> dict[TP, int | None]:
    """Redis's ``next`` offset of each partition (its last applied clock offset + 1 for state written
    before ``next`` existed; None when Redis has neither)."""
    pipe = client.pipeline(transaction=False)
    for topic, p in tps:
        pipe.hmget(keys.watermark(group, topic, p), "next", "offset")
    out: dict[TP, int | None] = {}
    for tp, (nxt, offset) in zip(tps, pipe.execute(), strict=True):
        out[tp] = int(nxt) if nxt is not None else (int(offset) + 1 if offset is not None else None)
    return out


def _kafka_offsets(settings: Settings, admin: AdminClient, tps: list[TP], timeout: float) -> tuple[
        dict[TP, int | None], dict[TP, int]]:
    parts = [TopicPartition(t, p) for t, p in tps]
    earliest_f = admin.list_offsets({tp: OffsetSpec.earliest() for tp in parts},  # type: ignore[no-untyped-call]
                                    request_timeout=timeout)
    earliest = {(tp.topic, tp.partition): f.result(timeout=timeout).offset for tp, f in earliest_f.items()}
    reader = CommittedOffsets(settings, settings.worker.app_id, "resume")
    try:
        return reader.read(parts, timeout), earliest
    finally:
        reader.close()


def _skip_expired(client: redis.Redis, group: str, applied: dict[TP, int | None], earliest: Mapping[TP, int]) -> None:
    """Where retention deleted records Redis had not applied yet, say so and move Redis's ``next`` to the
    earliest retained offset (those records are gone; the worker's gap check would otherwise stop at them)."""
    for tp, nxt in applied.items():
        first = earliest.get(tp, 0)
        if nxt is not None and nxt < first:
            _log.error("%s[%d]: records %d..%d expired (topic retention) before they were applied: their features "
                       "are lost; resuming at %d", tp[0], tp[1], nxt, first - 1, first)
            client.hset(keys.watermark(group, *tp), "next", first)
            applied[tp] = first


def _wait_until_empty(admin: AdminClient, group: str, timeout_s: float) -> bool:
    """Wait until ``group`` has no members (a SIGKILLed worker stays a member until its session times out)."""
    deadline = time.monotonic() + timeout_s
    told = False
    while True:
        try:
            desc = admin.describe_consumer_groups([group], request_timeout=10)[group].result(timeout=15)
        except (KafkaException, FutureTimeout):
            return True  # no such group (or no answer: the move itself reports the error)
        if not desc.members:
            return True
        if time.monotonic() > deadline:
            return False
        if not told:
            _log.warning("group %r still lists %d member(s) (a stopped worker's session has not timed out): "
                         "waiting up to %.0f s before moving its offsets", group, len(desc.members), timeout_s)
            told = True
        time.sleep(1.0)


def reconcile(settings: Settings, client: redis.Redis, timeout: float = 15.0,
              empty_timeout_s: float = 90.0) -> dict[TP, int]:
    """Move the worker group's committed offsets back to what Redis applied; returns what was moved.

    Run it before the worker joins its group: the broker moves the offsets of an empty group only, so a
    previous member that was SIGKILLed is waited out (its session timeout); a group with live members
    after ``empty_timeout_s`` gets one warning and keeps its positions."""
    kafka, group = settings.kafka, settings.worker.app_id
    tps = [(t, p) for t in (kafka.events_topic, kafka.items_topic) for p in range(kafka.partitions)]
    admin = AdminClient(client_config(kafka, "resume"))
    deadline = time.monotonic() + 4 * timeout
    while True:
        try:
            committed, earliest = _kafka_offsets(settings, admin, tps, timeout)
            break
        except (KafkaException, FutureTimeout) as exc:  # a future that never completes counts as transient
            if (isinstance(exc, KafkaException) and not transient(exc)) or time.monotonic() > deadline:
                msg = f"cannot read the offsets of group {group!r}: {exc or 'no answer'}"
                raise KafkaError(msg) from None
            time.sleep(0.5)  # e.g. the group coordinator still loading just after the broker started
    applied = applied_offsets(client, group, tps)
    _skip_expired(client, group, applied, earliest)
    plan = rewind_plan(committed, applied, earliest)
    if not plan:
        return plan
    if not _wait_until_empty(admin, group, empty_timeout_s):
        _log.warning("Redis is behind Kafka's commits on %d partition(s), but group %r still has live members "
                     "after %.0f s, so its offsets cannot be moved: stop every worker of the group and start "
                     "again", len(plan), group, empty_timeout_s)
        return {}
    moved = [TopicPartition(t, p, offset) for (t, p), offset in sorted(plan.items())]
    try:
        result = admin.alter_consumer_group_offsets([ConsumerGroupTopicPartitions(group, moved)],
                                                    request_timeout=timeout)[group].result()
    except KafkaException as exc:
        msg = f"cannot move the offsets of group {group!r} back to what Redis applied: {exc}"
        raise KafkaError(msg) from None
    failed = [f"{tp.topic}[{tp.partition}]: {tp.error}" for tp in result.topic_partitions if tp.error]
    if failed:
        msg = f"cannot move the offsets of group {group!r} back to what Redis applied: {'; '.join(failed)}"
        raise KafkaError(msg)
    for (t, p), offset in sorted(plan.items()):
        _log.warning("%s[%d]: Redis applied up to offset %d, Kafka had committed %s: replaying from %d",
                     t, p, offset, committed[(t, p)], offset)
    replay_items_first(settings, client, {p: o for (t, p), o in plan.items() if t == kafka.items_topic})
    return plan


def replay_items_first(settings: Settings, client: redis.Redis, start: Mapping[int, int], chunk: int = 5000) -> int:
    """Apply the items topic from ``start`` (partition → offset) before the worker starts, so that replayed
    events find their item metadata (categories, authors) as the first run did; returns the records applied.
    The worker's own item agent then re-reads them, idempotently."""
    if not start:
        return 0
    stage, topic, batch, applied = ItemMetaStage(client, settings), settings.kafka.items_topic, [], 0
    for rec in read_between(settings, topic, 0, 2**62):
        if rec.partition in start and rec.offset >= start[rec.partition]:
            batch.append(Record(topic, rec.partition, rec.offset, rec.key, rec.value, rec.timestamp_ms))
        if len(batch) >= chunk:
            stage.process(batch)
            applied, batch = applied + len(batch), []
    if batch:
        stage.process(batch)
        applied += len(batch)
    _log.warning("replayed %d item-metadata record(s) before the events", applied)
    return applied
