"""The producer SDK: a thin confluent-kafka adapter that speaks the event contract (docs/events.md).

Events are keyed by ``user_id`` on ``kafka.events_topic``, item metadata by ``item_id`` on
``kafka.items_topic``. The producer is idempotent and uses the ``murmur2_random`` partitioner, so a key
lands on the same partition as with aiokafka / Faust / the Java client (see
``tests/unit/test_partitioner.py``). Delivery failures are collected and raised as
:class:`~infra.errors.KafkaError` by :meth:`EventProducer.flush` — never silently lost.

Events are **batched** by default (``[producer]`` settings): :meth:`EventProducer.send` places each
event on the murmur2 partition of its ``user_id`` and a :class:`PartitionBatcher` packs a partition's
events into one record whose value is a JSON array (docs/events.md, "Batched records"). A partial batch
goes out after ``producer.linger_ms``, checked on every ``send``/``poll``/``flush``: there is no
background thread, so a producer that stops sending must call ``poll()`` or ``flush()`` (``close()`` and
leaving the ``with`` block flush). ``producer.batch_max_events = 1`` sends one event per record, as
before. Item metadata is never batched: the items topic is compacted by ``item_id``.

Usage (needs a running broker; ``recstream infra up``)::

    from infra.settings import load_settings
    from filters.events import Event
    from stream.producer import EventProducer

    with EventProducer(load_settings()) as producer:      # flushes on exit
        producer.check_connection()                       # fail fast with a readable error
        producer.send(Event(event_id="e1", type="click", user_id="u1", item_id="i9",
                            ts=1700000000000))

Configuration overrides are librdkafka property names; since most contain dots, pass them as a dict:
``EventProducer(settings, **{"linger.ms": 0})``. A name without a dot is translated (``linger_ms`` →
``linger.ms``) unless it is a Python callback option such as ``error_cb``.

>>> p = EventProducer.build_config(load_settings(kafka={"bootstrap": "127.0.0.1:9092"}), linger_ms=20)
>>> p["partitioner"], p["linger.ms"], p["enable.idempotence"], p["bootstrap.servers"]
('murmur2_random', 20, True, '127.0.0.1:9092')
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import confluent_kafka

from filters.events import Event, ItemMeta, encode
from infra.errors import InfraError, KafkaError
from infra.kafka_log import RepeatFilter, client_config
from infra.settings import Settings, load_settings
from stream.batching import BatchRecord, KeyPartitioner, PartitionBatcher, pack_grouped

__all__ = ["BASE_CONFIG", "DeliveryFailure", "EventProducer"]

log = logging.getLogger("recstream.producer")

#: Settings every recstream producer uses; overrides may change them (tests do, for the mock cluster).
BASE_CONFIG: dict[str, Any] = {
    "enable.idempotence": True,
    "partitioner": "murmur2_random",
    "compression.type": "lz4",
    "linger.ms": 5,
    "broker.address.family": "v4",
    "allow.auto.create.topics": False,
}
_CALLBACK_OPTIONS = frozenset({"error_cb", "stats_cb", "throttle_cb", "oauth_cb", "logger", "on_delivery"})
_MAX_KEPT_FAILURES = 20
_POLL_EVERY = 1000  # serve delivery callbacks at least every N produce calls
_UNASSIGNED = -1  # librdkafka's RD_KAFKA_PARTITION_UA: let the configured partitioner choose


class DeliveryFailure:
    """One message the broker did not accept (kept for the error message of :meth:`EventProducer.flush`).

    ``events`` is set for a batched record: how many values it carried — events, or samples on the samples
    topic (all of them are lost).

    >>> str(DeliveryFailure("t", b"u1", "Broker: Message size too large"))
    "t key=b'u1': Broker: Message size too large"
    >>> str(DeliveryFailure("t", b"u1", "Local: Message timed out", events=37))
    "t key=b'u1' (batched record of 37 values): Local: Message timed out"
    """

    __slots__ = ("events", "key", "reason", "topic")

    def __init__(self, topic: str, key: bytes | None, reason: str, events: int | None = None) -> None:
        self.topic = topic
        self.key = key
        self.reason = reason
        self.events = events

    def __str__(self) -> str:
        batch = "" if self.events is None else f" (batched record of {self.events} values)"
        return f"{self.topic} key={self.key!r}{batch}: {self.reason}"


class EventProducer:
    """Send events, item metadata or raw bytes to Kafka; use as a context manager (flushes on exit).

    Counters: ``produced`` / ``delivered`` count events (items and raw messages count one each) handed
    to librdkafka / acknowledged by the broker; ``records`` counts the Kafka records produced. Events
    still in partial batches are not "produced" yet. With batching on, use the producer from one
    thread at a time.

    Args:
        settings: recstream settings (topics, bootstrap, ``[producer]`` batching); ``None`` =
            :func:`load_settings`.
        **overrides: librdkafka properties applied on top of :data:`BASE_CONFIG`.
    """

    def __init__(self, settings: Settings | None = None, **overrides: Any) -> None:
        self.settings = settings if settings is not None else load_settings()
        self.config = self.build_config(self.settings, **overrides)
        self.bootstrap: str = str(self.config["bootstrap.servers"])
        self._lock = threading.Lock()
        self._failures: list[DeliveryFailure] = []
        self._failed = 0
        self._fatal: str | None = None
        self.delivered = 0
        self.produced = 0
        self.records = 0
        self._since_poll = 0
        self._failed_events = 0  # events inside failed batched records
        ps = self.settings.producer
        self._batcher = (PartitionBatcher(ps.batch_max_events, ps.batch_max_bytes, ps.linger_ms)
                         if ps.batch_max_events > 1 else None)
        self._placements: dict[str, KeyPartitioner] = {}  # topic -> murmur2 over its partitions (broker metadata)
        self._log_filter = RepeatFilter()
        if self.config.get("logger") is log:  # a private logger per producer, so the filter is ours
            self.config["logger"] = logging.getLogger(f"{log.name}.{id(self):x}")
            self.config["logger"].addFilter(self._log_filter)
        try:
            self._producer = confluent_kafka.Producer(self.config)
        except confluent_kafka.KafkaException as exc:
            msg = f"invalid producer configuration: {exc.args[0].str() if exc.args else exc}"
            raise KafkaError(msg) from None

    # -- configuration -------------------------------------------------------------------------------
    @staticmethod
    def build_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
        """The librdkafka configuration for ``settings`` plus ``overrides`` (see module docstring)."""
        base = {k: v for k, v in client_config(settings.kafka, "producer").items() if k not in _CALLBACK_OPTIONS}
        config: dict[str, Any] = {**base, **BASE_CONFIG}  # brokers and security; the producer logs itself
        for name, value in overrides.items():
            key = name if "." in name or name in _CALLBACK_OPTIONS else name.replace("_", ".")
            config[key] = value
        config.setdefault("logger", log)
        return config

    # -- sending --------------------------------------------------------------------------------------
    def send(self, event: Event) -> None:
        """Queue one event on the events topic, on the murmur2 partition of its ``user_id``.

        Batching (the default) buffers it for that partition; a record goes out when its batch is
        full or lingered (see the module docstring). With ``batch_max_events = 1`` the event is its
        own record, keyed by ``user_id``. Raises :class:`KafkaError` only when the producer is
        unusable; every other failure is raised by :meth:`flush`.
        """
        if self._batcher is None:
            self._produce(self.settings.kafka.events_topic, event.user_id.encode(), encode(event))
            return
        if self._fatal is not None:
            msg = f"producer is unusable: {self._fatal}"
            raise KafkaError(msg)
        topic = self.settings.kafka.events_topic
        ready = self._batcher.add(self._placement(topic)(event.user_id), event.user_id.encode(), encode(event))
        if ready:
            self._send_records(topic, ready)

    def send_item(self, meta: ItemMeta) -> None:
        """Queue one item-metadata record on the items topic, keyed by ``item_id``."""
        self._produce(self.settings.kafka.items_topic, meta.item_id.encode(), encode(meta))

    def send_raw(
        self,
        topic: str,
        key: bytes | str | None,
        value: bytes | str | None,
        headers: dict[str, bytes | str] | None = None,
    ) -> None:
        """Queue arbitrary bytes, unvalidated (tests, dead-letter drills).

        On the events topic the partial batches go out first, so the raw record keeps its place.
        """
        if self._batcher is not None and topic == self.settings.kafka.events_topic:
            self._send_records(topic, self._batcher.drain())
        if isinstance(key, str):
            key = key.encode()
        if isinstance(value, str):
            value = value.encode()
        self._produce(topic, key, value, headers)

    def _send_records(self, topic: str, records: list[BatchRecord]) -> None:
        """Produce batched records; one that librdkafka refuses is kept as a failure for :meth:`flush`."""
        for rec in records:
            try:
                self._produce(topic, rec.key, rec.value, partition=rec.partition, events=rec.events)
            except KafkaError as exc:
                self._record_failure(DeliveryFailure(topic, rec.key, str(exc), rec.events), fatal=None)

    def _placement(self, topic: str) -> KeyPartitioner:
        """murmur2 over ``topic``'s partitions: their count from broker metadata once, else
        ``kafka.partitions``."""
        placement = self._placements.get(topic)
        if placement is None:
            placement = self._placements[topic] = self._discover_placement(topic)
        return placement

    def _discover_placement(self, topic: str) -> KeyPartitioner:
        fallback = self.settings.kafka.partitions
        deadline = time.monotonic() + 5.0
        reason = "no metadata"
        while time.monotonic() < deadline:
            try:
                tmd = self._producer.list_topics(topic, timeout=5.0).topics.get(topic)
            except confluent_kafka.KafkaException as exc:
                reason = exc.args[0].str() if exc.args else str(exc)
                break
            if tmd is not None and tmd.error is None and tmd.partitions:
                return KeyPartitioner(len(tmd.partitions))
            if tmd is not None and tmd.error is not None:
                reason = tmd.error.str()
                if (tmd.error.code() == confluent_kafka.KafkaError.UNKNOWN_TOPIC_OR_PART
                        and not self.config.get("allow.auto.create.topics")):
                    break  # missing for good: the deliveries will fail and flush() says so
            time.sleep(0.1)  # e.g. no leader yet right after the topic was created
        log.warning("partition count of %s unknown (%s); batches are placed by kafka.partitions=%d",
                    topic, reason, fallback)
        return KeyPartitioner(fallback)

    def _produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: dict[str, Any] | None = None,
        partition: int = _UNASSIGNED,
        events: int | None = None,
    ) -> None:
        if self._fatal is not None:
            msg = f"producer is unusable: {self._fatal}"
            raise KafkaError(msg)
        on_delivery = self._on_delivery if events is None else functools.partial(self._on_delivery, events=events)
        self._queue(topic, key, value, headers, partition, on_delivery)
        self.produced += 1 if events is None else events
        self.records += 1
        self._since_poll += 1
        if self._since_poll >= _POLL_EVERY:  # delivery reports only: batches are swept by send/poll
            self._since_poll = 0
            self._producer.poll(0)

    def _queue(self, topic: str, key: bytes | None, value: bytes | None, headers: dict[str, Any] | None,
               partition: int, on_delivery: Any) -> None:
        """Hand one message to librdkafka, waiting (serving delivery reports) while its queue is full."""
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, headers=headers, partition=partition,
                                       on_delivery=on_delivery)
                return
            except BufferError:
                self._producer.poll(0.05)
            except confluent_kafka.KafkaException as exc:
                msg = f"cannot produce to {topic}: {exc.args[0].str() if exc.args else exc}"
                raise KafkaError(msg) from None

    def send_keyed(self, topic: str, records: Sequence[tuple[bytes, bytes]]) -> None:
        """Queue ``(key, value)`` records on ``topic`` (not the batched events topic), placed by the murmur2
        partitioner: the lean path for many records at once (the worker's samples). Failures are raised by
        :meth:`flush`."""
        if self._fatal is not None:
            msg = f"producer is unusable: {self._fatal}"
            raise KafkaError(msg)
        queue, on_delivery = self._queue, self._on_delivery
        for key, value in records:
            queue(topic, key, value, None, _UNASSIGNED, on_delivery)
        self.produced += len(records)
        self.records += len(records)
        self._producer.poll(0)

    def send_packed(self, topic: str, records: Sequence[tuple[str, Any]], per_record: int,
                    encode: Callable[[Any], bytes]) -> None:
        """Queue values on ``topic`` (not the events topic) packed into batched records, each a JSON array
        (``encode`` of a list: one encoder call per record) of at most ``per_record`` values (and
        ``producer.batch_max_bytes``) whose string keys all map to the record's murmur2 partition, in the
        given order; the first one keys the record. The worker's samples (docs/samples.md);
        ``per_record = 1`` sends ``encode(value)`` per record. Failures are raised by :meth:`flush`."""
        if per_record <= 1:
            self.send_keyed(topic, [(key.encode(), encode(value)) for key, value in records])
            return
        self._send_records(topic, pack_grouped(records, self._placement(topic), per_record,
                                               self.settings.producer.batch_max_bytes, encode))
        self._producer.poll(0)

    def poll(self, timeout: float = 0.0) -> int:
        """Send lingered partial batches, serve queued delivery reports; returns how many were served.

        A producer that stops sending should call this (or :meth:`flush`) so its last batches go out.
        """
        self._since_poll = 0
        if self._batcher is not None:
            ready = self._batcher.due()
            if ready:
                self._send_records(self.settings.kafka.events_topic, ready)
        return int(self._producer.poll(timeout))

    def _on_delivery(
        self, err: confluent_kafka.KafkaError | None, msg: confluent_kafka.Message, events: int | None = None
    ) -> None:
        if err is None:
            self.delivered += 1 if events is None else events
            return
        self._record_failure(DeliveryFailure(msg.topic() or "?", msg.key(), err.str(), events),
                             fatal=err.str() if err.fatal() else None)

    def _record_failure(self, failure: DeliveryFailure, fatal: str | None) -> None:
        with self._lock:
            self._failed += 1
            self._failed_events += failure.events or 0
            if len(self._failures) < _MAX_KEPT_FAILURES:
                self._failures.append(failure)
            if fatal is not None:
                self._fatal = fatal

    # -- completion -----------------------------------------------------------------------------------
    def flush(self, timeout: float = 30.0) -> None:
        """Send every partial batch, wait until every queued message is delivered; raise
        :class:`KafkaError` for any failure (a failed batched record says how many values it carried).

        Failures are reported once: a second ``flush`` after a raised error starts clean.
        """
        if self._batcher is not None:
            self._send_records(self.settings.kafka.events_topic, self._batcher.drain())
        remaining = int(self._producer.flush(timeout))
        with self._lock:
            failed, failures, lost = self._failed, self._failures, self._failed_events
            self._failed, self._failures, self._failed_events = 0, [], 0
        problems: list[str] = []
        if failed:
            shown = "; ".join(str(f) for f in failures[:3])
            carried = f", {lost} value(s) in batched records" if lost else ""
            problems.append(f"{failed} message(s) failed delivery{carried} (first: {shown})")
        if remaining:
            problems.append(f"{remaining} message(s) still undelivered after {timeout:g}s "
                            f"(bootstrap {self.bootstrap})")
        if problems:
            raise KafkaError("; ".join(problems))

    @property
    def pending(self) -> int:
        """Records queued locally or in flight, plus events still waiting in partial batches."""
        buffered = self._batcher.pending_events if self._batcher is not None else 0
        return len(self._producer) + buffered

    def check_connection(self, timeout: float = 5.0, topics: tuple[str, ...] | None = None) -> None:
        """Fail fast: a short metadata request, then check that the topics exist.

        Raises :class:`InfraError` when no broker answers at ``bootstrap`` within ``timeout`` seconds
        and :class:`KafkaError` when a topic (default: the events and items topics) is missing.
        """
        start = time.monotonic()
        self._log_filter.quiet = True  # connection-refused spam: the error below says it once
        try:
            md = self._producer.list_topics(timeout=timeout)
            self._producer.poll(0)
            self._log_filter.quiet = False
        except confluent_kafka.KafkaException as exc:
            reason = exc.args[0].str() if exc.args else str(exc)
            msg = (f"cannot reach Kafka at {self.bootstrap} ({reason}, after "
                   f"{time.monotonic() - start:.1f}s); is the broker running? (recstream infra up)")
            raise InfraError(msg) from None
        for topic, tmd in md.topics.items():  # saves send() / send_packed() their own metadata request
            if topic not in self._placements and tmd.error is None and tmd.partitions:
                self._placements[topic] = KeyPartitioner(len(tmd.partitions))
        wanted = topics if topics is not None else (self.settings.kafka.events_topic,
                                                     self.settings.kafka.items_topic)
        missing = [t for t in wanted if t not in md.topics or md.topics[t].error is not None]
        if missing:
            msg = (f"topic(s) {', '.join(missing)} do not exist on {self.bootstrap} "
                   "(auto-creation is off; create them with recstream infra up)")
            raise KafkaError(msg)

    def close(self, timeout: float = 30.0) -> None:
        """Flush (raising on failures); the producer object needs no other cleanup."""
        self.flush(timeout)

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.flush()
            return
        try:  # an exception is already propagating: deliver what we can, don't mask it
            self.flush(5.0)
        except KafkaError as flush_exc:
            log.warning("while handling %s: %s", exc_type.__name__, flush_exc)

