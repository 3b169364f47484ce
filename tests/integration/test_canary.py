"""``recstream canary`` against the real broker, worker and Redis: every partition's canary click becomes
readable through the serving client in each family, and canary users never reach the samples topic."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

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


def test_every_partition_reports_freshness_and_no_sample(services: ServicePair, redis_client: redis.Redis,
                                                         tmp_path: Path) -> None:
    base = services.settings
    settings: Settings = private_topics(base, "canary", worker={"metrics_port": 0},
                                        join={"windows_ms": dict.fromkeys(base.join.windows_ms, 1)}
                                        ).model_copy(update={"home": tmp_path})
    ensure_topics(settings)
    with WorkerProcess(settings, tmp_path / "worker.log"):
        LagProbe(settings).wait_until_caught_up(60)
        probe = Canary(settings, FeatureClient(settings=settings), timeout_s=30)
        with EventProducer(settings) as producer:
            rounds = [probe.round(producer) for _ in range(2)]
            time.sleep(2)
    for delays in rounds:
        for family in ("last_n", "stats"):
            assert len(delays[family]) == settings.kafka.partitions, (family, delays)
            assert all(0 < d < 30 for d in delays[family])
    samples = read_last(settings, settings.kafka.samples_topic, 100)
    assert not [r for r in samples if b"__canary__" in (r.value or b"")]
