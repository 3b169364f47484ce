"""The producer SDK: a thin confluent-kafka adapter that speaks the event contract (docs/events.md).

Events are keyed by ``user_id`` on ``kafka.events_topic``, item metadata by ``item_id`` on
``kafka.items_topic``. The producer is idempotent and uses the ``murmur2_random`` partitioner, so a key
lands on the same partition as with aiokafka / Faust / the Java client (see
``tests/unit/test_partitioner.py``). Delivery failures are collected and raised as
:class:`~infra.errors.KafkaError` by :meth:`EventProducer.flush` — never silently lost.

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

import logging
import re
import threading
import time
from types import TracebackType
from typing import Any

import confluent_kafka

from filters.events import Event, ItemMeta, encode
from infra.errors import InfraError, KafkaError
from infra.settings import Settings, load_settings

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


class _LogFilter(logging.Filter):
    """Mutes librdkafka logs while ``quiet`` (the connection check reports failures itself) and lets a
    repeated message (digits ignored) through at most once per ``every`` seconds."""

    def __init__(self, every: float = 30.0) -> None:
        super().__init__()
        self.quiet = False
        self.every = every
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if self.quiet:
            return False
        key = re.sub(r"\d+", "#", record.getMessage())
        now = time.monotonic()
        if now - self._last.get(key, -self.every) < self.every:
            return False
        if len(self._last) > 1000:
            self._last.clear()
        self._last[key] = now
        return True


class DeliveryFailure:
    """One message the broker did not accept (kept for the error message of :meth:`EventProducer.flush`).

    >>> str(DeliveryFailure("t", b"u1", "Broker: Message size too large"))
    "t key=b'u1': Broker: Message size too large"
    """

    __slots__ = ("key", "reason", "topic")

    def __init__(self, topic: str, key: bytes | None, reason: str) -> None:
        self.topic = topic
        self.key = key
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.topic} key={self.key!r}: {self.reason}"


class EventProducer:
    """Send events, item metadata or raw bytes to Kafka; use as a context manager (flushes on exit).

    Args:
        settings: recstream settings (topics, bootstrap); ``None`` = :func:`load_settings`.
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
        self._since_poll = 0
        self._log_filter = _LogFilter()
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
        config: dict[str, Any] = {"bootstrap.servers": settings.kafka.bootstrap, **BASE_CONFIG}
        for name, value in overrides.items():
            key = name if "." in name or name in _CALLBACK_OPTIONS else name.replace("_", ".")
            config[key] = value
        config.setdefault("logger", log)
        return config

    # -- sending --------------------------------------------------------------------------------------
    def send(self, event: Event) -> None:
        """Queue one event on the events topic, keyed by ``user_id``."""
        self._produce(self.settings.kafka.events_topic, event.user_id.encode(), encode(event))

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
        """Queue arbitrary bytes, unvalidated (tests, dead-letter drills)."""
        if isinstance(key, str):
            key = key.encode()
        if isinstance(value, str):
            value = value.encode()
        self._produce(topic, key, value, headers)

    def _produce(
        self, topic: str, key: bytes | None, value: bytes | None, headers: dict[str, Any] | None = None
    ) -> None:
        if self._fatal is not None:
            msg = f"producer is unusable: {self._fatal}"
            raise KafkaError(msg)
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, headers=headers,
                                       on_delivery=self._on_delivery)
                break
            except BufferError:
                # Local queue full: serve delivery reports until there is room, then retry.
                self._producer.poll(0.05)
            except confluent_kafka.KafkaException as exc:
                msg = f"cannot produce to {topic}: {exc.args[0].str() if exc.args else exc}"
                raise KafkaError(msg) from None
        self.produced += 1
        self._since_poll += 1
        if self._since_poll >= _POLL_EVERY:
            self.poll()

    def poll(self, timeout: float = 0.0) -> int:
        """Serve queued delivery reports; returns how many were served."""
        self._since_poll = 0
        return int(self._producer.poll(timeout))

    def _on_delivery(self, err: confluent_kafka.KafkaError | None, msg: confluent_kafka.Message) -> None:
        if err is None:
            self.delivered += 1
            return
        with self._lock:
            self._failed += 1
            if len(self._failures) < _MAX_KEPT_FAILURES:
                self._failures.append(DeliveryFailure(msg.topic() or "?", msg.key(), err.str()))
            if err.fatal():
                self._fatal = err.str()

    # -- completion -----------------------------------------------------------------------------------
    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every queued message is delivered; raise :class:`KafkaError` for any failure.

        Failures are reported once: a second ``flush`` after a raised error starts clean.
        """
        remaining = int(self._producer.flush(timeout))
        with self._lock:
            failed, failures = self._failed, self._failures
            self._failed, self._failures = 0, []
        problems: list[str] = []
        if failed:
            shown = "; ".join(str(f) for f in failures[:3])
            problems.append(f"{failed} message(s) failed delivery (first: {shown})")
        if remaining:
            problems.append(f"{remaining} message(s) still undelivered after {timeout:g}s "
                            f"(bootstrap {self.bootstrap})")
        if problems:
            raise KafkaError("; ".join(problems))

    @property
    def pending(self) -> int:
        """Messages queued locally or in flight."""
        return len(self._producer)

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

