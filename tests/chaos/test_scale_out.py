"""Scale-out correctness on the real broker and Redis: two workers share 8 partitions while events stream
in, a third joins mid-stream and later leaves (two rebalances with batches in flight); the features and
samples equal the brute-force reference — what one worker produces."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from infra.topics import ensure_topics
from stream.lag import LagProbe
from stream.worker_process import WorkerProcess
from tests.chaos.chaos_run import Feed
from tests.conftest import ServicePair
from tests.pipeline_check import assert_state_matches, make_stream, private_pipeline, produce

pytestmark = pytest.mark.integration


def assignments(log: Path) -> list[str]:
    """The partition tables a worker's log shows, one per assignment."""
    tables = log.read_text().split("Setting newly assigned partitions")[1:] if log.exists() else []
    return [t.split("Executing")[0] for t in tables]


def owned_events(log: Path, topic: str, timeout_s: float) -> None:
    """Wait until the worker logging to ``log`` was assigned partitions of ``topic`` (a slow machine can take
    many seconds to start Faust and finish the rebalance)."""
    deadline = time.monotonic() + timeout_s
    while not any(topic in t for t in assignments(log)):
        assert time.monotonic() < deadline, f"{log.name}: no {topic} partitions after {timeout_s:.0f} s"
        time.sleep(0.5)


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
        feed = Feed(settings, events, rate=600)  # 25 s: the third joins and leaves while it runs
        feed.start()
        time.sleep(3)
        third = WorkerProcess(settings, logs / "c.log").start()  # joins: a rebalance mid-stream
        owned_events(logs / "c.log", settings.kafka.events_topic, timeout_s=120)
        time.sleep(2)
        third.stop()  # leaves: another one
        feed.join()
        assert feed.error is None
        probe.wait_until_caught_up(300)
    for name in ("a.log", "b.log"):  # each worker owned events partitions at some point (c: waited for above)
        assert any(settings.kafka.events_topic in t for t in assignments(logs / name)), name
    assert_state_matches(settings, events)
