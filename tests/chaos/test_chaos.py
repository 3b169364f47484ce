"""The chaos test, reduced size (``recstream bench chaos`` runs it at ≥ 1M events): the worker and the trainer
are each SIGKILLed ≥ 5 times at random moments while events stream in; afterwards every Bloom answer, last-N
sequence and statistic equals the brute-force reference, the distinct samples equal the reference join, and
the trainer trained every distinct positive exactly once."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from filters.model_store import ModelStore
from infra.settings import Settings
from infra.topics import ensure_topics
from tests.chaos.chaos_run import chaos_settings, run_chaos
from tests.conftest import ServicePair
from tests.pipeline_check import assert_state_matches, distinct_positives, make_stream, private_pipeline

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(services: ServicePair, redis_client: redis.Redis) -> Iterator[Settings]:
    s = chaos_settings(private_pipeline(services.settings))
    ensure_topics(s)
    yield s


@pytest.mark.timeout(900)
def test_sigkills_of_worker_and_trainer_lose_and_double_count_nothing(settings: Settings) -> None:
    events, meta = make_stream(seed=21, n=30_000, users=80, items=300)  # fed at 600/s: a 50 s stream
    report = run_chaos(settings, events, meta, worker_kills=5, trainer_kills=5, seed=5,
                       log_dir=settings.home / "logs" / settings.worker.app_id, rate=600, progress=print)
    print(f"recovery after each worker SIGKILL: {[round(s, 1) for s in report.recovery_s]} s")
    assert report.worker_kills == 5 and report.trainer_kills == 5
    events, _ = assert_state_matches(settings, events)
    store = ModelStore(redis.Redis.from_url(settings.redis.effective_url), settings.redis.shards)
    manifest = store.manifest(store.current() or "")
    assert manifest.samples_seen == distinct_positives(settings, events)
