"""``recstream rebuild`` on the real broker and a private Redis that lost everything: the replay of the
retained topics reaches exactly the reference state, the trainer's group skips the re-emitted samples, and
the command refuses (one line, non-zero) while a worker runs or when Redis still holds features."""

from __future__ import annotations

import redis
from click.testing import CliRunner
from confluent_kafka import Consumer, TopicPartition

from infra.settings import Settings
from infra.topics import CommittedOffsets
from recstream.cli import main
from stream.lag import LagProbe
from stream.worker_process import WorkerProcess
from tests.pipeline_check import assert_state_matches, make_stream, produce


def _rebuild(settings: Settings, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["rebuild", *args], obj={"settings": settings})
    return result.exit_code, result.output


def _trainer_offsets(settings: Settings) -> dict[int, int | None]:
    reader = CommittedOffsets(settings, settings.learning.group, "test")
    try:
        got = reader.read([TopicPartition(settings.kafka.samples_topic, p) for p in range(settings.kafka.partitions)],
                          timeout=30)
    finally:
        reader.close()
    return {p: offset for (_, p), offset in got.items()}


def test_rebuild_after_redis_lost_everything_equals_the_reference(own_redis: Settings) -> None:
    settings = own_redis.model_copy(update={"learning": own_redis.learning.model_copy(
        update={"group": f"trainer-{own_redis.worker.app_id}"})})
    events, meta = make_stream(seed=41, n=3000)
    probe = LagProbe(settings)
    produce(settings, [], meta)
    with WorkerProcess(settings, settings.home / "logs" / "worker.log"):
        probe.wait_until_caught_up(120)
        produce(settings, events)
        probe.wait_until_caught_up(120)
        code, out = _rebuild(settings)
        assert code == 1 and out.count("\n") == 1 and "live member" in out, out
    client = redis.Redis.from_url(settings.redis.effective_url)
    code, out = _rebuild(settings)
    assert code == 1 and "--flush" in out and out.count("\n") == 1, out  # features are still there
    client.flushall()  # Redis lost its data entirely
    code, out = _rebuild(settings)
    assert code == 0, out
    assert "event records replayed" in out, out
    assert assert_state_matches(settings, events)[1] > 0  # every sample twice now: the replay re-emitted them
    assert _trainer_offsets(settings) == dict(enumerate(_samples_ends(settings)))


def _samples_ends(settings: Settings) -> list[int]:
    consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap, "group.id": "ends"})
    try:
        return [consumer.get_watermark_offsets(TopicPartition(settings.kafka.samples_topic, p), timeout=10)[1]
                for p in range(settings.kafka.partitions)]
    finally:
        consumer.close()
