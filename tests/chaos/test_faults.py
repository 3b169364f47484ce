"""Service faults against the real servers: Redis restored from an older copy of its data directory (it lost
acknowledged writes whose Kafka offsets were already committed), redis-server SIGKILLed mid-stream, the
Kafka broker stopped and restarted mid-stream. After each, every feature and sample equals the brute-force
reference; the recovery times are printed (``recstream bench chaos`` records them)."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest
import redis

from infra import kafka_broker, redis_server
from infra.procs import port_free
from infra.settings import Settings
from infra.topics import ensure_topics
from stream.app import ROLLBACK_EXIT
from stream.lag import LagProbe
from stream.worker_process import WorkerProcess
from tests.chaos.chaos_run import Feed, committed, wait_progress
from tests.conftest import ServicePair
from tests.pipeline_check import assert_state_matches, make_stream, private_pipeline, produce

pytestmark = pytest.mark.integration


def _kill_redis(settings: Settings) -> None:
    pid = redis_server.running_pid(settings)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while (redis_server.running_pid(settings) is not None or not port_free("127.0.0.1", settings.redis.port)) \
            and time.monotonic() < deadline:
        time.sleep(0.05)


def _aof(settings: Settings) -> Path:
    return settings.home / "redis" / "appendonlydir"


def test_redis_restored_from_an_older_copy_resumes_from_the_offsets_it_applied(own_redis: Settings) -> None:
    settings = own_redis
    events, meta = make_stream(seed=31, n=4500)
    first, second, third = events[:1500], events[1500:3000], events[3000:]
    probe = LagProbe(settings)
    produce(settings, [], meta)
    log = settings.home / "logs" / "worker.log"
    with WorkerProcess(settings, log) as worker:
        probe.wait_until_caught_up(120)  # item metadata first: events without a category take it from there
        produce(settings, first)
        probe.wait_until_caught_up(120)
        time.sleep(1.5)  # appendfsync everysec: the copy holds everything applied so far
        snapshot = settings.home / "aof-copy"
        shutil.copytree(_aof(settings), snapshot)
        produce(settings, second)
        probe.wait_until_caught_up(120)  # Kafka has committed offsets that the copy knows nothing of
        _kill_redis(settings)
        shutil.rmtree(_aof(settings))
        shutil.copytree(snapshot, _aof(settings))
        redis_server.start(settings)
        produce(settings, third)
        assert worker.wait(120) == ROLLBACK_EXIT, log.read_text()[-3000:]
    assert "Redis went back" in log.read_text()
    with WorkerProcess(settings, log):  # what a supervisor does: start it again
        probe.wait_until_caught_up(180)
    assert "replaying from" in log.read_text()
    assert_state_matches(settings, events)


def _supervised(worker: WorkerProcess, settings: Settings, log: Path) -> WorkerProcess:
    """Restart the worker if it stopped itself (a Redis that lost its last second of writes)."""
    if worker.alive():
        return worker
    return WorkerProcess(settings, log).start()


def test_redis_sigkill_mid_stream_loses_nothing(own_redis: Settings) -> None:
    settings = own_redis
    events, meta = make_stream(seed=32, n=9000)
    probe = LagProbe(settings)
    produce(settings, [], meta)
    log = settings.home / "logs" / "worker.log"
    worker = WorkerProcess(settings, log).start()
    probe.wait_until_caught_up(120)
    feed = Feed(settings, events, rate=1500)
    try:
        feed.start()
        time.sleep(2.5)
        _kill_redis(settings)
        time.sleep(1.0)
        redis_server.start(settings)
        restarted = time.monotonic()
        at_restart = committed(probe)  # nothing commits while Redis is down
        deadline = restarted + 120
        while committed(probe) <= at_restart and time.monotonic() < deadline:
            worker = _supervised(worker, settings, log)
            time.sleep(0.1)
        print(f"Redis SIGKILL: processing resumed {time.monotonic() - restarted:.1f} s after redis-server restarted")
        feed.join()
        assert feed.error is None
        deadline = time.monotonic() + 180
        while sum(r.lag for r in probe.read()) and time.monotonic() < deadline:
            worker = _supervised(worker, settings, log)
            time.sleep(0.5)
    finally:
        worker.stop()
    assert_state_matches(settings, events)


def test_broker_stop_and_restart_mid_stream_loses_nothing(services: ServicePair, redis_client: redis.Redis) -> None:
    settings = private_pipeline(services.settings)
    ensure_topics(settings)
    events, meta = make_stream(seed=33, n=9000)
    probe = LagProbe(settings)
    produce(settings, [], meta)
    with WorkerProcess(settings, settings.home / "logs" / f"{settings.worker.app_id}.log") as worker:
        probe.wait_until_caught_up(120)
        produce(settings, events[:4500])
        time.sleep(1.0)
        kafka_broker.stop(settings)
        time.sleep(2.0)
        kafka_broker.start(settings)
        restarted = time.monotonic()
        at_restart = committed(probe)  # the probe from before the restart (its admin client is renewed)
        produce(settings, events[4500:])
        wait_progress(probe, at_restart, 180, worker)
        print(f"broker restart: processing resumed {time.monotonic() - restarted:.1f} s after the broker was back")
        probe.wait_until_caught_up(180)
    assert_state_matches(settings, events)
