"""The ingest stage on the real Redis: where it says it is (``next``, what stream.resume resumes from), how
it notices a Redis that went back in time, and the two event-time sanity rules (future_ts, too_old)."""

from __future__ import annotations

import pytest
import redis

from filters.events import Event, encode, encode_batch
from infra import keys
from infra.errors import RedisRollbackError, SourceGapError
from infra.settings import Settings
from stream.batching import KeyPartitioner
from stream.ingest import IngestStage, ItemMetaStage, Record, StageOutput

pytestmark = pytest.mark.integration
DAY = 86_400_000
T0 = 1_767_225_600_000


@pytest.fixture
def settings(redis_service: object, redis_client: redis.Redis) -> Settings:
    base: Settings = redis_service.settings  # type: ignore[attr-defined]
    return base.model_copy(update={"join": base.join.model_copy(update={"enabled": False})})


def _record(settings: Settings, offset: int, value: bytes, user: str = "u1", timestamp_ms: int = 0) -> Record:
    p = KeyPartitioner(settings.kafka.partitions)(user)
    return Record(settings.kafka.events_topic, p, offset, user.encode(), value, timestamp_ms)


def _click(k: int, ts: int, user: str = "u1") -> bytes:
    return encode(Event(event_id=f"e{k}", type="click", user_id=user, item_id=f"i{k}", ts=ts))


def _run(stage: IngestStage, records: list[Record]) -> StageOutput:
    out = stage.process(records)
    out.commit()
    return out


def _next(r: redis.Redis, settings: Settings, topic: str, p: int) -> int:
    return int(r.hget(keys.watermark(settings.worker.app_id, topic, p), "next") or -1)


def test_next_covers_dead_lettered_tails_and_a_rollback_stops_the_stage(settings: Settings,
                                                                          redis_client: redis.Redis) -> None:
    stage = IngestStage(redis_client, settings)
    good = [_record(settings, k, _click(k, T0 + k)) for k in range(3)]
    p = good[0].partition
    _run(stage, good)
    assert _next(redis_client, settings, settings.kafka.events_topic, p) == 3
    out = _run(stage, [_record(settings, 3, b"not json"), _record(settings, 4, b'{"type": "buy"}')])
    assert [d.reason for d in out.dead_letters] == ["invalid_json", "invalid_field"]
    assert _next(redis_client, settings, settings.kafka.events_topic, p) == 5  # dead letters are behind us too
    redis_client.hset(keys.watermark(settings.worker.app_id, settings.kafka.events_topic, p), "next", 3)
    with pytest.raises(RedisRollbackError, match="went back in time"):
        stage.process([_record(settings, 5, _click(5, T0 + 5))])
    fresh = IngestStage(redis_client, settings)  # a restarted worker trusts what Redis says
    _run(fresh, [_record(settings, 3, _click(3, T0 + 3))])
    assert _next(redis_client, settings, settings.kafka.events_topic, p) == 4


@pytest.mark.parametrize(("ts", "reason"), [
    (T0 + 30 * 60_000, None),  # within worker.max_future_ms (1 h) of the record's timestamp
    (T0 + 2 * 3_600_000, "future_ts"),
    (T0 - 29 * DAY, None),  # late for statistics, but inside the horizon: it still reaches last-N
    (T0 - 32 * DAY, "too_old"),
])
def test_event_time_rules(settings: Settings, redis_client: redis.Redis, ts: int, reason: str | None) -> None:
    stage = IngestStage(redis_client, settings)
    _run(stage, [_record(settings, 0, _click(0, T0), timestamp_ms=T0)])
    batch = encode_batch([Event(event_id="x1", type="click", user_id="u1", item_id="ix", ts=ts),
                          Event(event_id="x2", type="click", user_id="u1", item_id="iy", ts=T0 + 1)])
    out = _run(stage, [_record(settings, 1, batch, timestamp_ms=T0)])
    assert [(d.reason, d.batch_index) for d in out.dead_letters] == ([] if reason is None else [(reason, 0)])
    assert redis_client.zcard(keys.KeyLayout(settings.redis.shards).sequence("u1", "click")) == (2 if reason else 3)


def test_a_batch_past_the_next_unapplied_offset_stops_the_stage(settings: Settings,
                                                                 redis_client: redis.Redis) -> None:
    """Records taken from Kafka but never applied (a consumer that dropped its buffer) must not be covered by
    the next batch's clock: the stage refuses, and nothing of that batch is applied."""
    _run(IngestStage(redis_client, settings), [_record(settings, k, _click(k, T0 + k)) for k in range(3)])
    stage = IngestStage(redis_client, settings)
    with pytest.raises(SourceGapError, match=r"records 3\.\.4 were never applied"):
        stage.process([_record(settings, 5, _click(5, T0 + 5))])
    p = KeyPartitioner(settings.kafka.partitions)("u1")
    assert _next(redis_client, settings, settings.kafka.events_topic, p) == 3
    _run(stage, [_record(settings, k, _click(k, T0 + k)) for k in range(3, 6)])  # the restart's batch: no gap
    assert _next(redis_client, settings, settings.kafka.events_topic, p) == 6
    off = settings.model_copy(update={"worker": settings.worker.model_copy(update={"gap_check": False})})
    _run(IngestStage(redis_client, off), [_record(settings, 9, _click(9, T0 + 9))])  # transaction markers: off
    assert _next(redis_client, settings, settings.kafka.events_topic, p) == 10


def test_item_metadata_records_its_next_offset(settings: Settings, redis_client: redis.Redis) -> None:
    stage = ItemMetaStage(redis_client, settings)
    topic = settings.kafka.items_topic
    stage.process([Record(topic, 2, k, b"i", b'{"item_id":"i1","category":"food"}') for k in (7, 8)])
    assert _next(redis_client, settings, topic, 2) == 9
