"""The producer SDK and ``recstream produce`` against the session's real broker."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from aiokafka.partitioner import DefaultPartitioner
from click.testing import CliRunner
from confluent_kafka import Consumer, Message, TopicPartition

from filters.events import Event, ItemMeta, decode_event, decode_item, encode
from recstream.data_cli import produce
from stream.producer import EventProducer

pytestmark = pytest.mark.integration


def read_back(bootstrap: str, topic: str, partitions: int, wanted: int, match: bytes) -> list[Message]:
    """Every message of ``topic`` whose value contains ``match`` (the topic is shared by the session)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"t-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "broker.address.family": "v4"})
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        found: list[Message] = []
        for _ in range(30):
            for m in consumer.consume(1000, timeout=1):
                if m.error() is None and match in (m.value() or b""):
                    found.append(m)
            if len(found) >= wanted:
                break
        return found
    finally:
        consumer.close()


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

    got = read_back(kafka_service.bootstrap, k.events_topic, k.partitions, 60, tag.encode())
    assert sorted(decode_event(m.value()).event_id for m in got) == sorted(e.event_id for e in events)
    for m in got:
        assert m.key() == decode_event(m.value()).user_id.encode()
        assert m.partition() == murmur2_partition(m.key(), k.partitions)
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
                    tag.encode())
    assert len(got) == 20
    newest = max(decode_event(m.value()).ts for m in got)
    assert newest > 1_600_000_000_000  # shifted to now

    strict = CliRunner().invoke(produce, [str(path), "--strict"], obj={"settings": settings})
    assert strict.exit_code == 1 and "ev.jsonl:11: invalid_json" in strict.output
