"""``recstream canary`` against the real broker, worker, trainer and Redis: every partition's canary becomes
readable in each family (exposure, last-N, stats, samples, embeddings); canary users never reach training;
and the canary's heartbeat closes the join's windows on a partition that has no other traffic."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from filters.events import CANARY_FAMILIES, Event
from filters.labels import Sample
from filters.model_store import ModelStore
from filters.sample_records import decode_samples
from infra.settings import Settings
from infra.topic_reader import read_last
from infra.topics import ensure_topics
from recstream.canary import Canary
from serving.client import FeatureClient
from stream.lag import LagProbe
from stream.producer import EventProducer
from stream.worker_process import WorkerProcess
from tests.conftest import ServicePair, private_topics

pytestmark = pytest.mark.integration


def _samples(settings: Settings) -> list[Sample]:
    records = read_last(settings, settings.kafka.samples_topic, 1000)
    return [s for r in records if r.value for s in decode_samples(r.value)]


def test_every_family_reports_freshness_and_the_heartbeat_closes_quiet_windows(
        services: ServicePair, redis_client: redis.Redis, tmp_path: Path) -> None:
    base = services.settings
    settings: Settings = private_topics(
        base, "canary", worker={"metrics_port": 0}, stats={"allowed_lateness_ms": 500},
        join={"windows_ms": dict.fromkeys(base.join.windows_ms, 1000)},
        learning={"metrics_port": 0, "publish_every_s": 0.5, "group": f"trainer-{time.time_ns()}"},
    ).model_copy(update={"home": tmp_path})
    ensure_topics(settings)
    store = ModelStore(redis_client, settings.redis.shards)
    with WorkerProcess(settings, tmp_path / "worker.log"), \
            WorkerProcess(settings, tmp_path / "trainer.log", args=("trainer",)):
        LagProbe(settings).wait_until_caught_up(60)
        with EventProducer(settings) as producer:
            producer.send(Event(event_id="quiet-1", type="impression", user_id="u-quiet", item_id="i1",
                                ts=int(time.time() * 1000)))
            producer.flush(10)
            LagProbe(settings).wait_until_caught_up(60)
            time.sleep(2)  # the window (1 s + 0.5 s lateness) has passed in wall time, not in event time
            assert not [s for s in _samples(settings) if s.user_id == "u-quiet"]
            deadline = time.monotonic() + 30
            while store.current() is None and time.monotonic() < deadline:
                time.sleep(0.2)  # the trainer publishes its first version
            probe = Canary(settings, FeatureClient(settings=settings), timeout_s=30)
            try:
                rounds = [probe.round(producer) for _ in range(2)]
            finally:
                probe.close()
            LagProbe(settings).wait_until_caught_up(60)
    for result in rounds:
        assert sorted(result.delays) == sorted(CANARY_FAMILIES)
        assert result.missed == dict.fromkeys(result.delays, 0)
        for family, got in result.delays.items():
            assert len(got) == settings.kafka.partitions, (family, result)
            assert all(0 < d < 30 for d in got)
    samples = _samples(settings)
    assert {s.kind for s in samples if s.user_id.startswith("__canary__")} == {"canary"}
    assert [(s.kind, s.item_id) for s in samples if s.user_id == "u-quiet"] == [("impression", "i1")]
