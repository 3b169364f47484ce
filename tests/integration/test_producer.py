"""The producer SDK and ``recstream produce`` against the session's real broker (batched records by default)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest
from aiokafka.partitioner import DefaultPartitioner
from click.testing import CliRunner
from confluent_kafka import Consumer, Message, TopicPartition
from confluent_kafka.cimpl import NewTopic

from filters.events import Event, ItemMeta, decode_item, decode_record, encode
from infra.errors import KafkaError
from infra.settings import Settings
from infra.topics import admin_client
from recstream.data_cli import produce
from stream.producer import EventProducer

pytestmark = pytest.mark.integration


def read_back(bootstrap: str, topic: str, partitions: int, wanted: int, match: bytes,
              size: Callable[[Message], int] = lambda m: 1) -> list[Message]:
    """Every message of ``topic`` whose value contains ``match`` (the topic is shared by the session),
    read until their ``size`` (default: 1 per message) adds up to ``wanted``."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"t-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "broker.address.family": "v4"})
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        found: list[Message] = []
        for _ in range(30):
            for m in consumer.consume(1000, timeout=1):
                if m.error() is None and match in (m.value() or b""):
                    found.append(m)
            if sum(size(m) for m in found) >= wanted:
                break
        return found
    finally:
        consumer.close()


def record_events(m: Message) -> list[Event]:
    """The events of one events-topic record (one event or a batched record); no errors expected."""
    rec = decode_record(m.value())
    assert rec.errors == [], rec.errors
    return [e for _, e in rec.events]


def n_events(m: Message) -> int:
    return len(record_events(m))


def murmur2_partition(key: bytes | None, n: int) -> int:
    assert key is not None
    parts = list(range(n))
    return int(DefaultPartitioner()(key, parts, parts))


def test_events_and_items_land_on_aiokafka_partitions(kafka_service) -> None:  # type: ignore[no-untyped-def]
    settings = kafka_service.settings
    k = settings.kafka
    tag = uuid.uuid4().hex
    events = [Event(event_id=f"{tag}-{i}", type="click", user_id=f"u{i % 17}", item_id=f"i{i}", ts=10**12 + i)
              for i in range(60)]
    items = [ItemMeta(item_id=f"{tag}-item-{i}", category="food") for i in range(5)]
    with EventProducer(settings) as producer:
        producer.check_connection()
        for e in events:
            producer.send(e)
        for meta in items:
            producer.send_item(meta)
    assert producer.delivered == 65

    got = read_back(kafka_service.bootstrap, k.events_topic, k.partitions, 60, tag.encode(), n_events)
    assert sorted(e.event_id for m in got for e in record_events(m)) == sorted(e.event_id for e in events)
    assert len(got) < 60  # batched
    for m in got:
        assert m.key() == record_events(m)[0].user_id.encode()
        for e in record_events(m):
            assert m.partition() == murmur2_partition(e.user_id.encode(), k.partitions)
    got_items = read_back(kafka_service.bootstrap, k.items_topic, k.partitions, 5, tag.encode())
    assert {decode_item(m.value()).item_id for m in got_items} == {meta.item_id for meta in items}
    assert all(m.partition() == murmur2_partition(m.key(), k.partitions) for m in got_items)


def test_cli_produce_jsonl(kafka_service, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    settings = kafka_service.settings
    tag = uuid.uuid4().hex
    lines = [encode(Event(event_id=f"{tag}-{i}", type="impression", user_id=f"u{i}", item_id="i1",
                          ts=1000 + i)) for i in range(20)]
    path = tmp_path / "ev.jsonl"
    path.write_bytes(b"\n".join([*lines[:10], b"{broken", *lines[10:]]) + b"\n")
    result = CliRunner().invoke(produce, [str(path), "--shift-to-now", "--rate", "200"],
                                obj={"settings": settings})
    assert result.exit_code == 0, result.output
    assert "sent 20 events" in result.output and "invalid_json ×1 (line 11)" in result.output
    got = read_back(kafka_service.bootstrap, settings.kafka.events_topic, settings.kafka.partitions, 20,
                    tag.encode(), n_events)
    assert sum(n_events(m) for m in got) == 20
    newest = max(e.ts for m in got for e in record_events(m))
    assert newest > 1_600_000_000_000  # shifted to now

    strict = CliRunner().invoke(produce, [str(path), "--strict"], obj={"settings": settings})
    assert strict.exit_code == 1 and "ev.jsonl:11: invalid_json" in strict.output


def test_batching_and_single_event_producers_interleaved(kafka_service) -> None:  # type: ignore[no-untyped-def]
    """Both record shapes on one topic: every event once, on its user's murmur2 partition, in send order.

    The topic has 5 partitions while ``kafka.partitions`` says 8: the batching producer must place by
    the broker's metadata, like librdkafka's partitioner does for the single-event producer.
    """
    tag = uuid.uuid4().hex
    topic = f"t-batch-{tag[:8]}"
    base = kafka_service.settings
    admin = admin_client(base)
    admin.create_topics([NewTopic(topic, num_partitions=5, replication_factor=1)])[topic].result(30)

    def settings(**producer: float) -> Settings:
        return Settings(home=base.home, kafka={**base.kafka.model_dump(), "events_topic": topic},
                        producer=producer)

    sent: dict[str, list[Event]] = {"b": [], "s": []}
    with EventProducer(settings(batch_max_events=16, linger_ms=60_000)) as batching, \
            EventProducer(settings(batch_max_events=1)) as single:
        for i in range(500):
            who, producer = ("s", single) if i % 3 == 0 else ("b", batching)
            e = Event(event_id=f"{tag}-{who}-{i}", type="click", user_id=f"u{i % 23}", item_id=f"i{i}",
                      ts=10**12 + i)
            producer.send(e)
            sent[who].append(e)
        assert batching.pending > 0  # partial batches wait for flush (linger is a minute)
        batching.flush(30)
        assert batching.pending == 0
    assert batching.delivered == 333 and single.delivered == single.records == 167
    assert batching.records < 333 // 10

    got = read_back(kafka_service.bootstrap, topic, 5, 500, tag.encode(), n_events)
    seen: dict[str, list[tuple[int, int, Event]]] = {"b": [], "s": []}  # (partition, offset, event)
    for m in got:
        rec = decode_record(m.value())
        assert rec.errors == []
        if b"-s-" in (m.value() or b""):  # the single-event producer: today's records
            assert not rec.batched and m.key() == rec.events[0][1].user_id.encode()
        for _, e in rec.events:
            assert m.partition() == murmur2_partition(e.user_id.encode(), 5)
            seen[e.event_id.split("-")[1]].append((m.partition() or 0, m.offset() or 0, e))
    for who, events in sent.items():
        assert sorted(e.event_id for *_, e in seen[who]) == sorted(e.event_id for e in events)  # exactly once
        for p in range(5):  # offset order, then array order (the list keeps it) == send order
            on_p = [e.ts for part, _, e in sorted(seen[who], key=lambda t: (t[0], t[1])) if part == p]
            assert on_p == sorted(on_p) and len(on_p) == len(set(on_p))


def test_send_keyed_places_by_murmur2_and_reports_failures(kafka_service) -> None:  # type: ignore[no-untyped-def]
    settings = kafka_service.settings
    k = settings.kafka
    tag = uuid.uuid4().hex
    records = [(f"u{i}".encode(), f'{{"tag":"{tag}","n":{i}}}'.encode()) for i in range(40)]
    with EventProducer(settings) as producer:
        producer.send_keyed(k.samples_topic, records)
    assert producer.delivered == producer.produced == 40
    got = read_back(kafka_service.bootstrap, k.samples_topic, k.partitions, 40, tag.encode())
    assert sorted((m.key(), m.value()) for m in got) == sorted(records)
    assert all(m.partition() == murmur2_partition(m.key(), k.partitions) for m in got)
    producer = EventProducer(settings)
    with pytest.raises(KafkaError, match="too large"):  # beyond the message limit: refused, never silent
        producer.send_keyed(k.samples_topic, [(b"u1", b"x" * 2_000_000)])
        producer.flush(30)


def test_send_packed_packs_per_partition_in_order(kafka_service) -> None:  # type: ignore[no-untyped-def]
    """The worker's samples: JSON arrays of at most ``per_record`` values whose keys all map to the record's
    murmur2 partition, in send order; the first value's key keys the record."""
    settings = kafka_service.settings
    k = settings.kafka
    tag = uuid.uuid4().hex
    records = [(f"u{i % 7}", {"tag": tag, "n": i}) for i in range(100)]
    with EventProducer(settings) as producer:
        producer.send_packed(k.samples_topic, records, per_record=6, encode=msgspec.json.encode)
    assert producer.delivered == producer.produced == 100
    got = read_back(kafka_service.bootstrap, k.samples_topic, k.partitions, 100, tag.encode(),
                    size=lambda m: (m.value() or b"").count(b'"n":'))
    arrays = {(m.partition(), m.offset()): msgspec.json.decode(m.value() or b"") for m in got}
    assert all(1 <= len(a) <= 6 for a in arrays.values()) and len(arrays) < 100
    assert all(m.partition() == murmur2_partition(m.key(), k.partitions) for m in got)
    place = {key: murmur2_partition(key.encode(), k.partitions) for key, _ in records}
    for p in set(place.values()):
        sent = [n for n, (key, _) in enumerate(records) if place[key] == p]
        read = [e["n"] for (part, _), a in sorted(arrays.items()) if part == p for e in a]
        assert read == sent  # offset order, then array order == send order
