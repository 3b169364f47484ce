"""The confluent producer must put a key on the partition aiokafka / Faust (murmur2) would choose.

Uses librdkafka's built-in mock cluster (``test.mock.num.brokers``): no real broker. The mock
auto-creates topics with 4 partitions; its CreateTopics needs a controller it does not have.
"""

from __future__ import annotations

import random
import uuid

import pytest
from aiokafka.partitioner import DefaultPartitioner
from confluent_kafka import Consumer, Message, Producer, TopicPartition

from filters.events import Event, ItemMeta
from infra.errors import InfraError, KafkaError
from infra.settings import Settings
from stream.producer import BASE_CONFIG, EventProducer

MOCK_PARTITIONS = 4


def keys() -> list[bytes]:
    rng = random.Random(42)
    out = [b"a", b"b", b"u1", b"user-123", "ü-ß-東京".encode(), b"x" * 200]
    out += [f"u{rng.randrange(10**9)}".encode() for _ in range(150)]
    out += [uuid.UUID(int=rng.getrandbits(128)).bytes for _ in range(50)]  # arbitrary bytes
    return out


def aiokafka_partition(key: bytes | None, n: int) -> int:
    assert key is not None
    parts = list(range(n))
    return int(DefaultPartitioner()(key, parts, parts))


def produce_partitions(config: dict[str, object], topic: str, ks: list[bytes]) -> dict[bytes, int]:
    got: dict[bytes, int] = {}

    def on_delivery(err: object, msg: object) -> None:
        assert err is None, err
        got[msg.key()] = msg.partition()  # type: ignore[attr-defined]

    p = Producer(config)
    for k in ks:
        p.produce(topic, key=k, value=b"v", on_delivery=on_delivery)
    assert p.flush(10) == 0
    return got


def test_murmur2_random_matches_aiokafka(mock_bootstrap: str) -> None:
    ks = keys()
    config = {**BASE_CONFIG, "bootstrap.servers": mock_bootstrap, "allow.auto.create.topics": True}
    got = produce_partitions(config, "t-murmur", ks)
    assert set(got.values()) == set(range(MOCK_PARTITIONS))
    assert got == {k: aiokafka_partition(k, MOCK_PARTITIONS) for k in ks}


def test_librdkafka_default_would_not_match(mock_bootstrap: str) -> None:
    """Why the setting matters: the default (consistent_random, CRC32) disagrees for most keys."""
    ks = keys()
    got = produce_partitions({"bootstrap.servers": mock_bootstrap}, "t-default", ks)
    differ = sum(got[k] != aiokafka_partition(k, MOCK_PARTITIONS) for k in ks)
    assert differ > len(ks) // 2


def test_event_producer_keys_by_user_and_item(mock_bootstrap: str) -> None:
    """End to end through the SDK: events keyed by user_id, items by item_id, murmur2 partitions."""
    settings = Settings(kafka={"bootstrap": mock_bootstrap, "events_topic": "ev", "items_topic": "it"},
                        producer={"batch_max_events": 1})  # one record per event: every record keyed by its user
    with EventProducer(settings, **{"allow.auto.create.topics": True}) as producer:
        assert producer.config["partitioner"] == "murmur2_random"
        assert producer.config["enable.idempotence"] is True
        producer.check_connection(topics=())
        users = [f"user-{i}" for i in range(40)]
        for i, u in enumerate(users):
            producer.send(Event(event_id=f"e{i}", type="click", user_id=u, item_id="i1", ts=1))
        producer.send_item(ItemMeta(item_id="item-7", category="food"))
        producer.send_raw("ev", b"raw-key", b"not json", headers={"reason": "drill"})
    assert producer.delivered == 42

    consumer = Consumer({"bootstrap.servers": mock_bootstrap, "group.id": "t", "enable.auto.commit": False})
    try:
        consumer.assign([TopicPartition(t, p, 0) for t in ("ev", "it") for p in range(MOCK_PARTITIONS)])
        msgs: list[Message] = []
        while len(msgs) < 42:
            batch = consumer.consume(42 - len(msgs), timeout=10)
            assert batch, f"only {len(msgs)} of 42 messages came back"
            msgs += [m for m in batch if m.error() is None]
    finally:
        consumer.close()
    for m in msgs:
        assert m.partition() == aiokafka_partition(m.key(), MOCK_PARTITIONS)
    raw = next(m for m in msgs if m.key() == b"raw-key")
    assert raw.value() == b"not json" and dict(raw.headers() or []) == {"reason": b"drill"}
    assert {m.key() for m in msgs if m.topic() == "it"} == {b"item-7"}
    assert {(m.key() or b"").decode() for m in msgs if m.topic() == "ev"} == {*users, "raw-key"}


# -- the SDK's delivery guarantees, on the same mock cluster ----------------------------------------
def test_delivery_failures_raise_on_flush(mock_bootstrap: str) -> None:
    settings = Settings(kafka={"bootstrap": mock_bootstrap})
    producer = EventProducer(settings, **{"message.timeout.ms": 300, "topic.metadata.propagation.max.ms": 10})
    for i in range(3):
        producer.send_raw("no-such-topic", f"k{i}", b"v")
    with pytest.raises(KafkaError, match=r"3 message\(s\) failed delivery.*no-such-topic"):
        producer.flush(10)
    producer.flush(1)  # reported once; the next flush starts clean


def test_full_local_queue_is_retried_not_lost(mock_bootstrap: str) -> None:
    settings = Settings(kafka={"bootstrap": mock_bootstrap})
    overrides = {"allow.auto.create.topics": True, "queue.buffering.max.messages": 5}
    with EventProducer(settings, **overrides) as producer:
        for i in range(500):
            producer.send_raw("t-buffer", f"k{i}", b"v" * 100)
    assert producer.delivered == producer.produced == 500


def test_unreachable_broker_is_a_clear_error() -> None:
    producer = EventProducer(Settings(kafka={"bootstrap": "127.0.0.1:1"}))
    with pytest.raises(InfraError, match=r"cannot reach Kafka at 127\.0\.0\.1:1"):
        producer.check_connection(timeout=0.5)


def test_missing_topic_is_reported(mock_bootstrap: str) -> None:
    producer = EventProducer(Settings(kafka={"bootstrap": mock_bootstrap, "events_topic": "absent"}))
    with pytest.raises(KafkaError, match="absent"):
        producer.check_connection(timeout=5, topics=("absent",))
