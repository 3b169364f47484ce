"""Scale-out correctness on the real broker and Redis: two workers share 8 partitions while events stream
in, a third joins mid-stream and later leaves (two rebalances with batches in flight); the features and
samples equal the brute-force reference — what one worker produces."""

from __future__ import annotations

import time

import pytest
import redis

from infra.topics import ensure_topics
from stream.lag import LagProbe
from stream.worker_process import WorkerProcess
from tests.chaos.chaos_run import Feed
from tests.conftest import ServicePair
from tests.pipeline_check import assert_state_matches, make_stream, private_pipeline, produce

pytestmark = pytest.mark.integration


@pytest.mark.timeout(600)
def test_two_workers_and_a_third_that_joins_and_leaves_equal_one(services: ServicePair,
                                                                 redis_client: redis.Redis) -> None:
    settings = private_pipeline(services.settings)
    assert settings.kafka.partitions == 8
    ensure_topics(settings)
    events, meta = make_stream(seed=61, n=15_000, users=60, items=200)
    probe = LagProbe(settings)
    logs = settings.home / "logs" / settings.worker.app_id
    produce(settings, [], meta)
    with WorkerProcess(settings, logs / "a.log"), WorkerProcess(settings, logs / "b.log"):
        probe.wait_until_caught_up(120)
        feed = Feed(settings, events, rate=1000)
        feed.start()
        time.sleep(3)
        third = WorkerProcess(settings, logs / "c.log").start()  # joins: a rebalance mid-stream
        time.sleep(6)
        third.stop()  # leaves: another one
        feed.join()
        assert feed.error is None
        probe.wait_until_caught_up(300)
    for name in ("a.log", "b.log", "c.log"):  # each worker owned events partitions at some point
        tables = (logs / name).read_text().split("Setting newly assigned partitions")[1:]
        assert any(settings.kafka.events_topic in t.split("Executing")[0] for t in tables), name
    assert_state_matches(settings, events)
