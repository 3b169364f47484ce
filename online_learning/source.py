"""The trainer's Kafka source: a thin confluent-kafka group consumer of the samples topic.

Offsets are committed only by :meth:`SampleSource.commit`, which the trainer calls after a publish has
reached Redis (rows, manifest and the trained sample ids in one round trip) — so a SIGKILL between two
publishes re-reads exactly the samples whose training was not published, and the published ids stop
any of them from being trained twice. librdkafka's own logs go to a logger at warning level, once per
distinct message, instead of stderr.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from confluent_kafka import Consumer, KafkaException, TopicPartition

from infra.errors import KafkaError
from infra.kafka_log import client_config
from infra.settings import Settings

__all__ = ["SampleRecord", "SampleSource"]

class SampleRecord(NamedTuple):
    """One record of the samples topic."""

    partition: int
    offset: int
    value: bytes


class SampleSource:
    """Subscribes ``group`` to ``kafka.samples_topic``; nothing is committed automatically."""

    def __init__(self, settings: Settings, group: str | None = None) -> None:
        self.topic = settings.kafka.samples_topic
        self.assigned = False  # partitions assigned at least once (before that, polls return nothing)
        group = group or settings.learning.group
        self._consumer: Any = Consumer({
            **client_config(settings.kafka, "trainer"),
            "group.id": group,
            # static membership: a restarted trainer takes its partitions back at once instead of
            # waiting for the killed one's session to time out
            "group.instance.id": f"{group}-0",
            "session.timeout.ms": 10_000,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "allow.auto.create.topics": False,
        })
        self._consumer.subscribe([self.topic], on_assign=self._on_assign)

    def _on_assign(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        self.assigned = True

    def poll(self, max_records: int, timeout_s: float) -> list[SampleRecord]:
        """Up to ``max_records`` records (fewer after ``timeout_s``); partition errors are skipped."""
        try:
            messages = self._consumer.consume(max_records, timeout=timeout_s)
        except KafkaException as exc:
            msg = f"reading {self.topic} failed: {exc}"
            raise KafkaError(msg) from None
        return [SampleRecord(m.partition(), m.offset(), m.value()) for m in messages
                if m.error() is None and m.value() is not None]

    def commit(self, next_offsets: Mapping[int, int]) -> None:
        """Commit ``partition -> next offset to read`` synchronously."""
        if not next_offsets:
            return
        try:
            self._consumer.commit(offsets=[TopicPartition(self.topic, p, o) for p, o in next_offsets.items()],
                                  asynchronous=False)
        except KafkaException as exc:
            msg = f"committing {self.topic} offsets failed: {exc}"
            raise KafkaError(msg) from None

    def close(self) -> None:
        """Leave the group (no commit)."""
        self._consumer.close()
