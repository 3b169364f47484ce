"""Fuzzed input through the real worker: ≥ 10,000 bad messages interleaved with a valid stream — every bad
one lands in the dead-letter topic exactly once with its reason, every valid event is processed (the
features equal the brute-force reference), and the worker's memory stays bounded."""

from __future__ import annotations

import random
import uuid
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from infra.settings import Settings
from infra.topics import ensure_topics
from stream.lag import LagProbe
from stream.producer import EventProducer
from stream.worker_process import WorkerProcess
from tests.conftest import ServicePair
from tests.fuzz_messages import fuzz_messages
from tests.pipeline_check import (
    AT,
    assert_features_match,
    make_stream,
    private_pipeline,
    produce,
    single_event_records,
    topic_order,
)

pytestmark = pytest.mark.integration
# the families whose reason is fixed (the others are invalid_json or invalid_field, by where they break)
REASONS = {"future_ts": "future_ts", "ancient_ts": "too_old", "huge": "too_large", "empty": "empty",
           "wrong_key": "wrong_partition"}


def _rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS"))) / 1024


def _dead_letters(settings: Settings, expect: int) -> list[tuple[str, bytes | None]]:
    consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap, "group.id": uuid.uuid4().hex,
                         "enable.auto.commit": False})
    topic = settings.kafka.dlq_topic
    consumer.assign([TopicPartition(topic, p, 0) for p in range(settings.kafka.partitions)])
    out: list[tuple[str, bytes | None]] = []
    idle = 0
    while len(out) < expect and idle < 20:
        batch = consumer.consume(1000, timeout=0.5)
        idle = 0 if batch else idle + 1
        out += [(dict(m.headers() or [])["reason"].decode(), m.value()) for m in batch if m.error() is None]
    consumer.close()
    return out


@pytest.mark.timeout(900)
def test_ten_thousand_fuzzed_messages_go_to_the_dlq_and_valid_events_flow(services: ServicePair,
                                                                         redis_client: object) -> None:
    settings = private_pipeline(services.settings)
    ensure_topics(settings)
    events, meta = make_stream(seed=51, n=3000)
    users = sorted({e.user_id for e in events})
    bad = fuzz_messages(10_000, seed=9, partitions=settings.kafka.partitions, users=users, at=AT)
    probe = LagProbe(settings)
    produce(settings, [], meta)
    with WorkerProcess(settings, settings.home / "logs" / f"{settings.worker.app_id}.log") as worker:
        probe.wait_until_caught_up(120)
        produce(settings, events[:1500])  # the partitions' clocks exist before the ancient timestamps arrive
        probe.wait_until_caught_up(120)
        rss_before = _rss_mb(worker.pid or 0)
        rng = random.Random(4)
        with EventProducer(single_event_records(settings)) as producer:
            rest = iter(events[1500:])
            for k, msg in enumerate(bad):
                producer.send_raw(settings.kafka.events_topic, msg.key, msg.value)
                if rng.random() < 0.15:
                    produce(settings, [ev for _, ev in zip(range(30), rest, strict=False)])
                if k % 1000 == 999:
                    producer.flush(60)
            producer.flush(60)
        produce(settings, list(rest))
        probe.wait_until_caught_up(600)
        rss_after = _rss_mb(worker.pid or 0)
    dead = _dead_letters(settings, len(bad))
    assert len(dead) == len(bad), Counter(reason for reason, _ in dead)
    by_value = Counter(reason for reason, _ in dead)
    assert set(by_value) <= {"invalid_json", "invalid_field", "too_large", "empty", "future_ts", "too_old",
                             "wrong_partition"}, by_value
    sent = Counter(REASONS.get(m.family, "other") for m in bad)
    for reason in REASONS.values():
        assert by_value[reason] == sent[reason], (reason, by_value, sent)
    print(f"worker RSS {rss_before:.0f} MB before the fuzz, {rss_after:.0f} MB after; dead letters {dict(by_value)}")
    assert rss_after - rss_before < 300, (rss_before, rss_after)  # nothing of the bad input is kept
    events = topic_order(settings, events)
    assert_features_match(settings, events)
