"""End to end through the real broker, the real worker process and the real Redis.

A seeded random stream with out-of-order, late and duplicate events goes through ``recstream worker``;
every served feature must equal the brute-force reference recomputed from the raw events — after a
clean run, after the worker is SIGKILLed mid-stream and restarted, and after the consumer group is
rewound to the beginning and everything is processed again.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import pytest
from aiokafka import AIOKafkaProducer
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, Message, TopicPartition
from confluent_kafka.admin import AdminClient

from filters.events import ACTIONS, Event, encode
from filters.sample_records import decode_samples
from infra.settings import Settings
from serving.client import FeatureClient
from stream.lag import LagProbe
from stream.producer import EventProducer
from stream.worker_process import WorkerProcess
from tests.integration import reference
from tests.integration.reference import Ev
from tests.pipeline_check import (
    AT,
    assert_features_match,
    assert_samples_match,
    assert_state_matches,
    make_stream,
    private_pipeline,
    produce,
    read_all,
    single_event_records,
    topic_order,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def pipeline(services: object, redis_client: object) -> Iterator[Settings]:
    """Fresh topics, consumer group and (flushed) Redis per test, on the session's Kafka and Redis."""
    from infra.topics import ensure_topics

    settings = private_pipeline(services.settings)  # type: ignore[attr-defined]
    ensure_topics(settings)
    yield settings


def test_features_equal_reference_after_crash_and_rewind(pipeline: Settings) -> None:
    settings = pipeline
    events, meta = make_stream(seed=11, n=3000)
    probe = LagProbe(settings)
    produce(settings, [], meta)
    with WorkerProcess(settings, settings.home / "logs" / f"{settings.worker.app_id}.log") as worker:
        probe.wait_until_caught_up(120)
        half = len(events) // 2
        produce(settings, events[:half])
        probe.wait_until_caught_up(120)
        produce(settings, events[half:])
        worker.crash()  # SIGKILL mid-stream: batches applied in Redis but not committed get replayed
    with WorkerProcess(settings, settings.home / "logs" / f"{settings.worker.app_id}.log"):
        probe.wait_until_caught_up(180)
    events, duplicates = assert_state_matches(settings, events)

    # rewind the consumer group of every source topic to the start and process everything again
    admin = AdminClient({"bootstrap.servers": settings.kafka.bootstrap})
    tps = [TopicPartition(t, p, 0) for t in (settings.kafka.events_topic, settings.kafka.items_topic)
           for p in range(settings.kafka.partitions)]
    admin.alter_consumer_group_offsets([ConsumerGroupTopicPartitions(settings.worker.app_id, tps)])[
        settings.worker.app_id].result()
    with WorkerProcess(settings, settings.home / "logs" / f"{settings.worker.app_id}.log"):
        probe.wait_until_caught_up(180)
    assert_features_match(settings, events)
    assert assert_samples_match(settings, events) == duplicates  # the rewind re-emitted nothing
    print(f"samples re-emitted after the SIGKILL: {duplicates}")


def test_batched_record_dead_letters_its_bad_events_alone(pipeline: Settings) -> None:
    settings = pipeline
    parts = settings.kafka.partitions
    stranger = next(f"x{k}" for k in range(100) if reference.partition_of(f"x{k}", parts)
                    != reference.partition_of("u1", parts))
    good = [encode(Event(event_id=f"g{k}", type="click", user_id="u1", item_id=f"i{k}", ts=AT - 1000 + k))
            for k in range(3)]
    bad_type = b'{"event_id":"b1","type":"buy","user_id":"u1","item_id":"i9","ts":1}'
    elsewhere = encode(Event(event_id="w1", type="click", user_id=stranger, item_id="i8", ts=AT - 5))
    batch = b"[" + b",".join([good[0], bad_type, good[1], elsewhere, good[2]]) + b"]"
    with EventProducer(single_event_records(settings)) as producer:
        producer.send_raw(settings.kafka.events_topic, b"u1", batch)
        producer.send_raw(settings.kafka.events_topic, b"u1", b'[{"event_id": "cut')
        producer.flush(30)
    with WorkerProcess(settings, settings.home / "logs" / f"{settings.worker.app_id}.log"):
        LagProbe(settings).wait_until_caught_up(120)
    client = FeatureClient(settings.redis.effective_url, settings=settings)
    assert [e.event_id for e in client.last_n("u1", "click")] == ["g2", "g1", "g0"]
    assert client.last_n(stranger, "click") == []
    dead = _drain(settings, settings.kafka.dlq_topic, 3)
    found = {(h.get("reason"), h.get("batch_index"), m.value())
             for m in dead for h in [{k: v.decode() for k, v in m.headers()}]}
    assert found == {("invalid_field", "1", bad_type), ("wrong_partition", "3", elsewhere),
                     ("invalid_json", None, b'[{"event_id": "cut')}


def test_invalid_message_goes_to_dlq_and_valid_ones_flow(pipeline: Settings) -> None:
    settings = pipeline
    good = Event(event_id="ok-1", type="click", user_id="u1", item_id="i1", ts=AT - 1000, category="food")
    with EventProducer(settings) as producer:
        producer.send_raw(settings.kafka.events_topic, b"u1", b'{"event_id": "bad-1", "type": "buy"}')
        producer.send_raw(settings.kafka.events_topic, b"u1", b"\xff not json")
        producer.send(good)
        producer.flush(30)
    with WorkerProcess(settings, settings.home / "logs" / f"{settings.worker.app_id}.log"):
        LagProbe(settings).wait_until_caught_up(120)
    client = FeatureClient(settings.redis.effective_url, settings=settings)
    assert [e.item_id for e in client.last_n("u1", "click")] == ["i1"]

    consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap, "group.id": uuid.uuid4().hex,
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([settings.kafka.dlq_topic])
    dead = []
    for _ in range(60):
        msg = consumer.poll(1.0)
        if msg is not None and not msg.error():
            dead.append(msg)
        if len(dead) == 2:
            break
    consumer.close()
    assert len(dead) == 2
    headers = [dict((k, v.decode()) for k, v in m.headers()) for m in dead]
    assert {h["reason"] for h in headers} == {"invalid_field", "invalid_json"}
    assert {m.value() for m in dead} == {b'{"event_id": "bad-1", "type": "buy"}', b"\xff not json"}
    assert all(h["source_topic"] == settings.kafka.events_topic for h in headers)
    assert {h["source_offset"] for h in headers} == {"0", "1"}


def _drain(settings: Settings, topic: str, expect: int) -> list[Message]:
    consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap, "group.id": uuid.uuid4().hex,
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    out: list[Message] = []
    for _ in range(120):
        msg = consumer.poll(0.5)
        if msg is not None and not msg.error():
            out.append(msg)
        if len(out) == expect:
            break
    consumer.close()
    return out


async def _send_with_aiokafka(bootstrap: str, topic: str, keys: list[str]) -> dict[str, int]:
    """Faust's own transport (aiokafka, default partitioner) sending keyed messages."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        return {k: (await producer.send_and_wait(topic, b"x", key=k.encode())).partition for k in keys}
    finally:
        await producer.stop()


def test_producer_and_faust_agree_on_partitions(pipeline: Settings) -> None:
    """confluent (murmur2_random) and Faust's transport put each key on the same partition, and the
    worker's own placement check (every event of a record on its user's murmur2 partition) agrees."""
    settings = pipeline
    keys = [f"key-{k}" for k in range(64)]
    single = settings.model_copy(update={"producer": settings.producer.model_copy(update={"batch_max_events": 1})})
    with EventProducer(single) as producer:  # one record per event: each record's key is its user
        for k, key in enumerate(keys):
            producer.send(Event(event_id=f"e{k}", type="impression", user_id=key, item_id=key, ts=AT))
        producer.flush(30)
    by_confluent = {m.key().decode(): m.partition() for m in _drain(settings, settings.kafka.events_topic, 64)}
    by_faust_transport = asyncio.run(_send_with_aiokafka(settings.kafka.bootstrap, settings.kafka.dlq_topic, keys))
    assert by_confluent == by_faust_transport
    assert len(set(by_confluent.values())) > 1

    with WorkerProcess(settings, settings.home / "logs" / f"{settings.worker.app_id}.log"):
        LagProbe(settings).wait_until_caught_up(120)
    client = FeatureClient(settings.redis.effective_url, settings=settings)
    assert all(client.seen(key, [key], at=AT + 1) == [True] for key in keys)  # nothing was dead-lettered


def test_idle_flush_emits_the_windows_of_a_quiet_partition(pipeline: Settings) -> None:
    """Live traffic that stops: with ``join.idle_flush_s`` the worker's timer closes the open windows."""
    settings = pipeline.model_copy(update={"join": pipeline.join.model_copy(update={"idle_flush_s": 1.0})})
    now = int(time.time() * 1000)
    events = [Ev("live1", "impression", "u1", "i1", now, None, None),
              Ev("live2", "click", "u1", "i1", now + 5, None, None)]
    with WorkerProcess(settings, settings.home / "logs" / f"{settings.worker.app_id}.log"):
        produce(settings, events)
        LagProbe(settings).wait_until_caught_up(120)
        kinds: list[str] = []
        for _ in range(60):
            records = read_all(settings, settings.kafka.samples_topic)
            kinds = [s.kind for m in records for s in decode_samples(m.value)]
            if "impression" in kinds:
                break
            time.sleep(0.5)
    assert sorted(kinds) == ["impression", "positive"]


def test_http_serves_the_reference_features(pipeline: Settings) -> None:
    """Kafka → the worker process → Redis → ``recstream serve`` → HTTP equals the brute-force reference."""
    import httpx

    from tests.conftest import free_ports
    from tests.serving_data import start_serve

    settings = pipeline
    events, meta = make_stream(seed=12, n=1500)
    produce(settings, [], meta)
    with WorkerProcess(settings, settings.home / "logs" / f"{settings.worker.app_id}.log"):
        produce(settings, events)
        LagProbe(settings).wait_until_caught_up(120)
    events = topic_order(settings, events)
    parts, users = settings.kafka.partitions, sorted({e.user_id for e in events})
    port = free_ports(1)[0]
    with start_serve(settings, port, settings.home / "logs" / "serve.log"), httpx.Client(
            base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
        for action in ACTIONS:
            cap = settings.lastn.capacity[action]
            expected = reference.sequences(events, parts, action, cap)
            for user in users:
                got = http.get(f"/v1/users/{user}/last_n", params={"action": action, "n": cap}).json()["entries"]
                assert [(g["item_id"], g["ts"]) for g in got] == [(w.item_id, w.ts) for w in expected.get(user, [])]
        want = reference.counts(events, parts, settings.stats.allowed_lateness_ms, AT)
        for user in users:
            served = http.get(f"/v1/stats/user/{user}", params={"at": AT}).json()["stats"]
            for window in reference.WINDOW_MS:
                for etype in ("impression", *ACTIONS):
                    assert served[window][etype] == want.get(("user", user, window, etype), 0), (user, window)
            impressed = sorted({e.item_id for e in events if e.user_id == user and e.type == "impression"})
            r = http.post(f"/v1/users/{user}/unseen", params={"at": AT}, json={"items": impressed}).json()
            assert r["unseen"] == []  # no false negatives: every exposure is reported seen


def test_the_worker_reports_its_own_lag_per_partition(pipeline: Settings) -> None:
    """After catching up, every partition the worker consumed reports 0 messages and 0 s of lag."""
    import re
    import urllib.request

    from tests.conftest import free_ports

    port = free_ports(1)[0]
    settings = pipeline.model_copy(update={"worker": pipeline.worker.model_copy(update={"metrics_port": port})})
    events, meta = make_stream(seed=13, n=800)
    produce(settings, [], meta)
    with WorkerProcess(settings, settings.home / "logs" / f"{settings.worker.app_id}.log"):
        produce(settings, events)
        LagProbe(settings).wait_until_caught_up(120)
        time.sleep(1.0)
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    rows = re.findall(r'^recstream_consumer_lag_(messages|seconds)\{group="([^"]+)",partition="(\d+)",'
                      r'topic="([^"]+)"\} ([0-9.e+-]+)$', text, re.M)
    events_rows = [r for r in rows if r[3] == settings.kafka.events_topic]
    assert events_rows and {r[1] for r in events_rows} == {settings.worker.app_id}
    assert all(float(r[4]) == 0.0 for r in events_rows), events_rows
    assert {r[2] for r in events_rows if r[0] == "messages"} == {
        str(reference.partition_of(e.user_id, settings.kafka.partitions)) for e in events}
