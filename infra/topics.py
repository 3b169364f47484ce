"""Create recstream's Kafka topics up front (the broker runs with ``auto.create.topics.enable=false``).

>>> [(s.name, s.config) for s in topic_specs(Settings())]  # doctest: +NORMALIZE_WHITESPACE
[('recstream-events', {}), ('recstream-dlq', {}), ('recstream-samples', {}),
 ('recstream-items', {'cleanup.policy': 'compact'})]
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from infra.errors import KafkaError
from infra.kafka_log import client_config
from infra.settings import Settings

_log = logging.getLogger("recstream.infra.topics")


@dataclass(frozen=True)
class TopicSpec:
    """One topic recstream needs: name, partition count, topic-level configs."""

    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """Every topic recstream uses, all with ``kafka.partitions`` partitions (pure)."""
    k = settings.kafka
    p = k.partitions
    return [
        TopicSpec(k.events_topic, p),
        TopicSpec(k.dlq_topic, p),
        TopicSpec(k.samples_topic, p),
        TopicSpec(k.items_topic, p, {"cleanup.policy": "compact"}),
    ]


def transient(exc: Exception) -> bool:
    """Whether asking the broker again shortly may succeed: a retriable error, a group coordinator still
    loading after a broker start, a request that timed out.

    >>> from confluent_kafka import KafkaError as E, KafkaException
    >>> transient(KafkaException(E(E.COORDINATOR_LOAD_IN_PROGRESS))), transient(KafkaException(E(E.GROUP_ID_NOT_FOUND)))
    (True, False)
    """
    from confluent_kafka import KafkaError as CError

    busy = {CError.COORDINATOR_LOAD_IN_PROGRESS, CError.COORDINATOR_NOT_AVAILABLE, CError.NOT_COORDINATOR,
            CError._TIMED_OUT}
    err = exc.args[0] if exc.args else None
    return isinstance(err, CError) and bool(err.retriable() or err.code() in busy)


def admin_client(settings: Settings) -> Any:
    """A confluent-kafka AdminClient for ``settings.kafka.bootstrap`` (IPv4 only, logs to logging)."""
    from confluent_kafka.admin import AdminClient

    return AdminClient(client_config(settings.kafka, "admin"))


def require_kafka(settings: Settings, timeout: float = 5.0) -> None:
    """One :class:`KafkaError` line when the broker does not answer within ``timeout`` seconds (before a
    client library would print its own stack trace or retry forever)."""
    from confluent_kafka import KafkaException

    try:
        admin_client(settings).list_topics(timeout=timeout)
    except KafkaException as exc:
        reason = exc.args[0].str() if exc.args and hasattr(exc.args[0], "str") else str(exc)
        msg = (f"cannot reach Kafka at {settings.kafka.bootstrap} ({reason}); start it with `recstream infra up` "
               "or set RECSTREAM_KAFKA_BOOTSTRAP")
        raise KafkaError(msg) from None


def ensure_topics(settings: Settings, timeout: float = 30.0) -> list[str]:
    """Create the missing topics (existing ones are fine) and wait until every partition has a leader.

    Returns the names of the topics it created. Raises KafkaError when creation fails, when an
    existing topic has a different partition count than the settings, or on timeout.
    """
    from confluent_kafka import KafkaError as CKafkaError
    from confluent_kafka import KafkaException
    from confluent_kafka.cimpl import NewTopic

    admin = admin_client(settings)
    specs = topic_specs(settings)
    try:
        existing = admin.list_topics(timeout=timeout).topics
    except KafkaException:
        require_kafka(settings)  # the one-line reason
        raise
    missing = [s for s in specs if s.name not in existing]
    created: list[str] = []
    if missing:
        futures = admin.create_topics(
            [NewTopic(s.name, num_partitions=s.partitions, replication_factor=1, config=s.config)
             for s in missing],
            operation_timeout=timeout, request_timeout=timeout,
        )
        for name, fut in futures.items():
            try:
                fut.result()
                created.append(name)
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                if getattr(err, "code", lambda: None)() == CKafkaError.TOPIC_ALREADY_EXISTS:
                    continue
                msg = f"cannot create Kafka topic {name!r} on {settings.kafka.bootstrap}: {exc}"
                raise KafkaError(msg) from None
    _wait_for_leaders(admin, settings, specs, timeout)
    if created:
        _log.info("created topics %s", created)
    return created


def _wait_for_leaders(admin: Any, settings: Settings, specs: list[TopicSpec], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending: list[str] = []
    while True:
        topics = admin.list_topics(timeout=max(1.0, deadline - time.monotonic())).topics
        pending = []
        for spec in specs:
            meta = topics.get(spec.name)
            if meta is None or meta.error is not None:
                pending.append(spec.name)
                continue
            if len(meta.partitions) != spec.partitions:
                msg = (f"Kafka topic {spec.name!r} has {len(meta.partitions)} partitions but "
                       f"kafka.partitions is {spec.partitions}; use the matching setting, or delete the "
                       f"topic (or the data home {settings.home}) to recreate it")
                raise KafkaError(msg)
            if any(p.leader < 0 for p in meta.partitions.values()):
                pending.append(spec.name)
        if not pending:
            return
        if time.monotonic() >= deadline:
            msg = f"Kafka topics {pending} have partitions without a leader after {timeout:.0f}s"
            raise KafkaError(msg)
        time.sleep(0.1)


class CommittedOffsets:
    """A consumer group's committed offsets, read by a consumer of that group that never subscribes (so it
    never joins the group nor triggers a rebalance).

    Not ``AdminClient.list_consumer_group_offsets``: when the broker answers it NOT_COORDINATOR (just
    after a broker start, or when the coordinator moves), librdkafka dereferences the admin client's
    missing consumer group and the process dies with SIGSEGV (confluentinc/librdkafka#5040, open in
    2.16); a consumer's own group handles that answer and asks the coordinator again.
    """

    def __init__(self, settings: Settings, group: str, name: str) -> None:
        from confluent_kafka import Consumer

        self._consumer = Consumer({**client_config(settings.kafka, name), "group.id": group,
                                   "enable.auto.commit": False})

    def read(self, partitions: list[Any], timeout: float) -> dict[tuple[str, int], int | None]:
        """``(topic, partition) -> committed offset`` (None: nothing committed); KafkaException on failure."""
        from confluent_kafka import KafkaException

        got = self._consumer.committed(partitions, timeout=timeout)
        failed = [tp.error for tp in got if tp.error is not None]
        if failed:
            raise KafkaException(failed[0])
        return {(tp.topic, tp.partition): (tp.offset if tp.offset >= 0 else None) for tp in got}

    def close(self) -> None:
        self._consumer.close()
