"""Batched records from the producer: the pure PartitionBatcher, then EventProducer on librdkafka's mock
cluster (no real broker; the mock auto-creates topics with 4 partitions)."""

from __future__ import annotations

import json

import pytest
from aiokafka.partitioner import DefaultPartitioner
from confluent_kafka import Consumer, Message, TopicPartition

from filters.events import Event, decode_record, encode
from infra.errors import KafkaError
from infra.settings import Settings, load_settings
from stream.batching import BatchRecord, PartitionBatcher, murmur2_partition, pack_grouped
from stream.producer import EventProducer

MOCK_PARTITIONS = 4


class StepClock:
    def __init__(self) -> None:
        self.now = 1_000

    def __call__(self) -> int:
        return self.now


def item(n: int) -> bytes:
    """An encoded event stand-in of exactly ``n`` bytes."""
    return b'"' + b"x" * (n - 2) + b'"'


# -- PartitionBatcher ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("max_events", "max_bytes", "sizes", "expected"),
    [
        # count bound: a record every max_events events
        (3, 10_000, [10] * 7, [3, 3]),
        # bytes bound: "[" + 3 * 10 + 2 commas + "]" = 34 fits in 34, a 4th would not
        (100, 34, [10] * 7, [3, 3]),
        (100, 33, [10] * 7, [2, 2, 2]),
        # an event larger than max_bytes goes alone, after the partial batch before it
        (100, 50, [10, 80, 10], [1, 1]),
        # exactly full by bytes: emitted at once
        (100, 12, [10, 10], [1, 1]),
    ],
)
def test_count_and_byte_bounds(max_events: int, max_bytes: int, sizes: list[int], expected: list[int]) -> None:
    b = PartitionBatcher(max_events, max_bytes, linger_ms=1e9, clock=StepClock())
    out: list[BatchRecord] = []
    for n in sizes:
        out += b.add(0, b"k", item(n))
    assert [r.events for r in out] == expected
    assert all(len(r.value) <= max_bytes or r.events == 1 for r in out)
    assert b.pending_events == len(sizes) - sum(expected)
    rest = b.drain()
    assert sum(r.events for r in out + rest) == len(sizes) and b.pending_events == 0


def test_value_is_the_json_array_and_key_the_first_event() -> None:
    b = PartitionBatcher(2, 1000, 5, clock=StepClock())
    assert b.add(2, b"u1", b'{"a":1}') == []
    [rec] = b.add(2, b"u2", b'{"a":2}')
    assert rec == BatchRecord(2, b"u1", b'[{"a":1},{"a":2}]', 2)


def test_partitions_are_batched_separately_in_add_order() -> None:
    b = PartitionBatcher(2, 1000, 1e9, clock=StepClock())
    out: list[BatchRecord] = []
    for i in range(10):
        out += b.add(i % 3, f"k{i}".encode(), str(i).encode())
    out += b.drain()
    by_partition = {p: [v for r in out if r.partition == p for v in r.value[1:-1].split(b",")] for p in range(3)}
    assert by_partition == {p: [str(i).encode() for i in range(10) if i % 3 == p] for p in range(3)}


def test_linger_is_checked_on_add_and_due() -> None:
    clock = StepClock()
    b = PartitionBatcher(100, 10_000, linger_ms=5, clock=clock)
    assert b.add(0, b"a", b"1") == []
    clock.now += 3
    assert b.add(1, b"b", b"2") == [] and b.due() == []
    clock.now += 2  # partition 0's oldest event is 5 ms old, partition 1's 2 ms
    assert [(r.partition, r.events) for r in b.due()] == [(0, 1)]
    clock.now += 2
    assert [(r.partition, r.events) for r in b.add(2, b"c", b"3")] == []  # 1 is 4 ms old
    clock.now += 1
    assert [(r.partition, r.events) for r in b.add(0, b"d", b"4")] == [(1, 1)]
    clock.now += 100
    assert sorted((r.partition, r.events) for r in b.due()) == [(0, 1), (2, 1)]
    assert b.due() == [] and b.drain() == []


def test_zero_linger_sends_every_event_at_once() -> None:
    b = PartitionBatcher(100, 10_000, linger_ms=0, clock=StepClock())
    assert [r.events for r in b.add(0, b"a", b"1")] == [1]
    assert b.pending_events == 0


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="bad batch bounds"):
        PartitionBatcher(0, 100, 5)


@pytest.mark.parametrize(("per_record", "max_bytes", "sizes", "expected"), [
    (3, 1000, [5] * 7, [3, 3, 1]),  # the count bound
    (10, 14, [5] * 4, [2, 2]),  # [a,b] = 13 bytes fits, [a,b,c,d] = 25 is halved
    (10, 14, [5] * 3, [1, 2]),  # an odd span halves unevenly, in order
    (10, 10, [30, 5], [1, 1]),  # a value over the bound alone still goes (the broker refuses or takes it)
    (1000, 1000, [], []),
])
def test_pack_grouped_bounds(per_record: int, max_bytes: int, sizes: list[int], expected: list[int]) -> None:
    values = [item(n) for n in sizes]
    recs = pack_grouped([("u", v) for v in values], lambda key: 0, per_record, max_bytes,
                        lambda vs: b"[" + b",".join(vs) + b"]")
    assert [r.events for r in recs] == expected
    assert b"".join(r.value[1:-1].replace(b",", b"") for r in recs) == b"".join(values)  # every value, in order
    assert all(len(r.value) <= max_bytes for r in recs if r.events > 1)


def test_pack_grouped_keeps_each_partitions_order_and_keys_records_by_their_first_value() -> None:
    keyed = [(f"u{i % 5}", i) for i in range(40)]
    recs = pack_grouped(keyed, lambda key: int(key[1:]) % 2, 4, 1000, lambda vs: json.dumps(vs).encode())
    for partition in (0, 1):
        mine = [(r, json.loads(r.value)) for r in recs if r.partition == partition]
        assert [v for _, vs in mine for v in vs] == [i for key, i in keyed if int(key[1:]) % 2 == partition]
        assert all(r.key == f"u{vs[0] % 5}".encode() and len(vs) <= 4 for r, vs in mine)


def test_murmur2_partition_matches_aiokafka() -> None:
    parts = list(range(7))
    for key in [b"u1", b"user-123", "ü-東京".encode(), b"x" * 33, b""]:
        assert murmur2_partition(key, 7) == DefaultPartitioner()(key, parts, parts)


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"batch_max_events": 0}, "producer.batch_max_events"),
        ({"batch_max_bytes": 2 * 1024 * 1024}, "producer.batch_max_bytes"),
        ({"linger_ms": -1}, "producer.linger_ms"),
    ],
)
def test_producer_settings_bounds(env: dict[str, float], fragment: str) -> None:
    from infra.errors import ConfigError

    with pytest.raises(ConfigError, match=fragment):
        load_settings(producer=env)


# -- EventProducer on the mock cluster ------------------------------------------------------------------
def consume_all(bootstrap: str, topic: str, records: int) -> list[Message]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "t", "enable.auto.commit": False})
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in range(MOCK_PARTITIONS)])
        msgs: list[Message] = []
        while len(msgs) < records:
            got = consumer.consume(records - len(msgs), timeout=10)
            assert got, f"only {len(msgs)} of {records} records came back"
            msgs += [m for m in got if m.error() is None]
        return msgs
    finally:
        consumer.close()


def events(n: int, users: int, tag: str) -> list[Event]:
    return [Event(event_id=f"{tag}-{i}", type="click", user_id=f"user-{i % users}", item_id=f"i{i}", ts=i)
            for i in range(n)]


def test_batches_land_on_the_murmur2_partition_of_every_event(mock_bootstrap: str) -> None:
    """Settings say 8 partitions, the (mock) topic has 4: the producer asks the broker."""
    settings = Settings(kafka={"bootstrap": mock_bootstrap, "events_topic": "ev-batch"},
                        producer={"batch_max_events": 7, "linger_ms": 60_000})
    sent = events(100, users=30, tag="b")
    with EventProducer(settings, **{"allow.auto.create.topics": True}) as producer:
        for e in sent:
            producer.send(e)
        producer.send_raw("ev-batch", b"raw-key", b"not json")  # the partial batches go out first
    assert producer.delivered == 101
    msgs = consume_all(mock_bootstrap, "ev-batch", producer.records)
    got: list[Event] = []
    for m in sorted(msgs, key=lambda m: (m.partition(), m.offset())):
        if m.key() == b"raw-key":
            continue
        rec = decode_record(m.value())
        assert rec.batched and rec.errors == [] and 1 <= len(rec.events) <= 7
        assert m.key() == rec.events[0][1].user_id.encode()
        for _, e in rec.events:
            assert m.partition() == DefaultPartitioner()(e.user_id.encode(), [0, 1, 2, 3], [0, 1, 2, 3])
        got += [e for _, e in rec.events]
    assert sorted(got, key=lambda e: e.ts) == sent
    for p in range(MOCK_PARTITIONS):  # send order within each partition
        on_p = [e.ts for e in got if murmur2_partition(e.user_id.encode(), MOCK_PARTITIONS) == p]
        assert on_p == sorted(on_p)
    raw = next(m for m in msgs if m.key() == b"raw-key")
    before = [m.offset() or 0 for m in msgs if m.partition() == raw.partition() and m is not raw]
    assert (raw.offset() or 0) > max(before)


def test_single_event_mode_sends_todays_records(mock_bootstrap: str) -> None:
    settings = Settings(kafka={"bootstrap": mock_bootstrap, "events_topic": "ev-single"},
                        producer={"batch_max_events": 1})
    sent = events(20, users=20, tag="s")
    with EventProducer(settings, **{"allow.auto.create.topics": True}) as producer:
        for e in sent:
            producer.send(e)
    assert producer.records == producer.delivered == 20
    msgs = consume_all(mock_bootstrap, "ev-single", 20)
    assert sorted(m.value() or b"" for m in msgs) == sorted(encode(e) for e in sent)
    assert {m.key() for m in msgs} == {e.user_id.encode() for e in sent}


def test_flush_delivers_a_partial_batch_and_poll_sends_lingered_ones(mock_bootstrap: str) -> None:
    settings = Settings(kafka={"bootstrap": mock_bootstrap, "events_topic": "ev-partial"},
                        producer={"linger_ms": 0.0})
    producer = EventProducer(settings, **{"allow.auto.create.topics": True})
    producer.send(events(1, 1, "p")[0])  # linger 0: out at once
    assert producer.records == 1
    lazy = EventProducer(Settings(kafka={"bootstrap": mock_bootstrap, "events_topic": "ev-partial"}),
                         **{"allow.auto.create.topics": True})
    lazy.send(events(1, 1, "q")[0])
    assert lazy.records == 0 and lazy.pending == 1
    lazy.flush(10)
    assert lazy.records == lazy.delivered == 1
    producer.close(10)
    assert producer.delivered == 1


def test_failed_batch_reports_its_events(mock_bootstrap: str) -> None:
    settings = Settings(kafka={"bootstrap": mock_bootstrap, "events_topic": "no-such-events"},
                        producer={"batch_max_events": 10})
    producer = EventProducer(settings, **{"message.timeout.ms": 300, "topic.metadata.propagation.max.ms": 10})
    for e in events(25, users=1, tag="f"):
        producer.send(e)
    with pytest.raises(KafkaError, match=r"3 message\(s\) failed delivery, 25 value\(s\) in batched records.*"
                                         r"batched record of 10 values"):
        producer.flush(10)
    assert producer.delivered == 0
    producer.flush(1)  # reported once
