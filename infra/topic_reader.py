"""Read a Kafka topic without a consumer group: a thin confluent-kafka adapter (``recstream samples``, trainer).

Partitions are assigned explicitly and nothing is committed (``enable.auto.commit=False``, no group
join), so reading never moves anyone's offsets. Two reads:

- :func:`read_last`: the last ``n`` records of every partition, merged and sorted by record timestamp;
- :func:`read_between`: the records whose timestamp is in ``[since_ms, until_ms)``, streamed (bounded
  memory). Each partition starts at ``offsets_for_times(since_ms)`` and stops at its first record with a
  timestamp ``>= until_ms`` or at its end offset as of the start of the read — so timestamps are assumed
  to grow along a partition (producer clock or LogAppendTime).

An unreachable broker or a missing topic raises :class:`~infra.errors.KafkaError` (one line) after
``connect_timeout`` seconds; librdkafka's own logs are dropped.

>>> tail_start(low=10, high=50, n=5), tail_start(low=10, high=12, n=5), tail_start(low=3, high=3, n=5)
(45, 10, 3)
>>> recs = [TopicRecord(0, 7, 300, None, b"c"), TopicRecord(1, 2, 100, None, b"a"), TopicRecord(0, 6, 200, None, b"b")]
>>> [r.value for r in sorted(recs, key=record_order)]
[b'a', b'b', b'c']
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any, NamedTuple

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition
from confluent_kafka import KafkaError as CKafkaError

from infra.errors import KafkaError
from infra.kafka_log import client_config
from infra.settings import Settings

__all__ = ["TopicRecord", "read_between", "read_last", "record_order", "tail_start"]

_quiet = logging.getLogger("recstream.infra.topic_reader.librdkafka")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False  # librdkafka's connect-retry chatter: failures are reported as one KafkaError
_BATCH = 500


class TopicRecord(NamedTuple):
    """One Kafka record as read: where it is, its timestamp (ms, -1 if none), key and value bytes."""

    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None


def tail_start(low: int, high: int, n: int) -> int:
    """The first offset of the last ``n`` records of a partition with watermarks ``low`` / ``high``."""
    return max(low, high - n)


def record_order(record: TopicRecord) -> tuple[int, int, int]:
    """Sort key: record timestamp, then partition and offset (a stable, total order)."""
    return record.timestamp_ms, record.partition, record.offset


def _bootstrap(source: Settings | str) -> str:
    return source if isinstance(source, str) else source.kafka.bootstrap


def _consumer(source: Settings | str) -> Any:
    """A consumer that never joins or commits to a group (``group.id`` is only required by the client)."""
    base = {"bootstrap.servers": source, "broker.address.family": "v4"} if isinstance(source, str) \
        else client_config(source.kafka, "topic_reader")
    return Consumer({
        **base,
        "group.id": "recstream-topic-reader",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
        "allow.auto.create.topics": False,
        "logger": _quiet,
        "error_cb": lambda _err: None,  # transport errors surface as timeouts / KafkaError below
    })


def _partitions(consumer: Any, bootstrap: str, topic: str, timeout: float) -> list[int]:
    try:
        meta = consumer.list_topics(timeout=timeout)
    except KafkaException as exc:
        reason = exc.args[0].str() if exc.args else str(exc)
        msg = f"cannot reach Kafka at {bootstrap} within {timeout:g} s ({reason})"
        raise KafkaError(msg) from None
    tmeta = meta.topics.get(topic)
    if tmeta is None or tmeta.error is not None:
        msg = f"topic {topic!r} does not exist on {bootstrap}; run `recstream infra up` first"
        raise KafkaError(msg)
    return sorted(tmeta.partitions)


def _watermarks(consumer: Any, topic: str, partition: int, timeout: float) -> tuple[int, int]:
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout, cached=False)
    except KafkaException as exc:
        msg = f"cannot read the offsets of {topic}[{partition}]: {exc.args[0].str() if exc.args else exc}"
        raise KafkaError(msg) from None
    return int(low), int(high)


def _record(msg: Message) -> TopicRecord:
    _, ts = msg.timestamp()
    return TopicRecord(msg.partition() or 0, msg.offset() or 0, ts, msg.key(), msg.value())


def _drain(consumer: Any, topic: str, ranges: dict[int, tuple[int, int]], until_ms: int | None,
           idle_timeout: float) -> Iterator[TopicRecord]:
    """Records of ``ranges`` (partition -> [start, end) offsets); a partition stops at its end offset,
    at end-of-partition, or (``until_ms``) at its first record with a timestamp ``>= until_ms``."""
    open_ = {p: end for p, (start, end) in ranges.items() if start < end}
    if not open_:
        return
    consumer.assign([TopicPartition(topic, p, ranges[p][0]) for p in sorted(open_)])
    last_progress = time.monotonic()
    while open_:
        msgs = consumer.consume(num_messages=_BATCH, timeout=0.5)
        if msgs:
            last_progress = time.monotonic()
        elif time.monotonic() - last_progress > idle_timeout:
            msg = f"reading {topic} stalled: no record for {idle_timeout:g} s (partitions {sorted(open_)} unfinished)"
            raise KafkaError(msg)
        for m in msgs:
            p = m.partition()
            if p not in open_:
                continue
            err = m.error()
            if err is not None:
                if err.code() == CKafkaError._PARTITION_EOF:
                    del open_[p]
                    continue
                msg = f"cannot read {topic}[{p}]: {err.str()}"
                raise KafkaError(msg)
            rec = _record(m)
            if until_ms is not None and rec.timestamp_ms >= until_ms:
                del open_[p]
                continue
            if rec.offset < open_[p]:
                yield rec
            if rec.offset >= open_[p] - 1:
                del open_[p]


def read_last(source: Settings | str, topic: str, n: int, connect_timeout: float = 5.0,
              idle_timeout: float = 30.0) -> list[TopicRecord]:
    """The last ``n`` records of each partition of ``topic``, sorted by :func:`record_order`.

    ``source`` is the settings or a bootstrap string. The newest ``n`` overall are the last ``n`` of the
    result (when timestamps grow along each partition).
    """
    bootstrap = _bootstrap(source)
    consumer = _consumer(source)
    try:
        ranges = {}
        for p in _partitions(consumer, bootstrap, topic, connect_timeout):
            low, high = _watermarks(consumer, topic, p, connect_timeout)
            ranges[p] = (tail_start(low, high, n), high)
        records = list(_drain(consumer, topic, ranges, None, idle_timeout))
    finally:
        consumer.close()
    return sorted(records, key=record_order)


def read_between(source: Settings | str, topic: str, since_ms: int, until_ms: int, connect_timeout: float = 5.0,
                 idle_timeout: float = 30.0) -> Iterator[TopicRecord]:
    """Stream the records of ``topic`` with ``since_ms <= timestamp < until_ms`` (partitions interleaved,
    each in offset order); stops at the end offsets of when the read began."""
    bootstrap = _bootstrap(source)
    consumer = _consumer(source)
    try:
        parts = _partitions(consumer, bootstrap, topic, connect_timeout)
        try:
            found = consumer.offsets_for_times([TopicPartition(topic, p, since_ms) for p in parts],
                                               timeout=connect_timeout)
        except KafkaException as exc:
            msg = f"cannot look up offsets by time on {topic}: {exc.args[0].str() if exc.args else exc}"
            raise KafkaError(msg) from None
        ranges = {}
        for tp in found:
            if tp.error is not None:
                msg = f"cannot look up offsets by time on {topic}[{tp.partition}]: {tp.error.str()}"
                raise KafkaError(msg)
            if tp.offset >= 0:  # -1: no record at or after since_ms in this partition
                ranges[tp.partition] = (tp.offset, _watermarks(consumer, topic, tp.partition, connect_timeout)[1])
        for rec in _drain(consumer, topic, ranges, until_ms, idle_timeout):
            if rec.timestamp_ms >= since_ms:
                yield rec
    finally:
        consumer.close()
