"""The trainer process against the real broker and Redis: samples in, rows published, SIGKILL and
restart without training a sample twice, duplicates on the topic dropped, the towers untouched."""

from __future__ import annotations

import random
import time
import uuid
from pathlib import Path

import pytest
import redis

from filters.labels import Sample
from filters.model_store import ModelStore
from filters.sample_records import encode_sample
from infra.settings import Settings
from infra.topics import ensure_topics
from stream.producer import EventProducer
from stream.worker_process import WorkerProcess
from tests.conftest import ServicePair
from tests.learning_data import stream

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(services: ServicePair, redis_client: redis.Redis, tmp_path: Path) -> Settings:
    base = services.settings
    tag = uuid.uuid4().hex[:8]
    return base.model_copy(update={
        "home": tmp_path,
        "kafka": base.kafka.model_copy(update={"samples_topic": f"samples-{tag}"}),
        "learning": base.learning.model_copy(update={
            "max_users": 200, "max_items": 500, "batch_size": 64, "min_count": 1, "publish_every_s": 0.5,
            "metrics_port": 0, "group": f"trainer-{tag}"}),
    })


def _send(settings: Settings, samples: list[Sample], per_record: int) -> None:
    """Samples as the worker sends them: ``per_record`` to a batched record (1 = one per record)."""
    with EventProducer(settings) as producer:
        producer.send_packed(settings.kafka.samples_topic, [(s.user_id, s) for s in samples], per_record, encode_sample)
        producer.flush(30)


def _manifest_when(store: ModelStore, ready: object, timeout: float = 60.0) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = store.current()
        if current is not None:
            m = store.manifest(current)
            if ready(m):  # type: ignore[operator]
                return m
        time.sleep(0.2)
    pytest.fail("the trainer published nothing in time")


def test_sigkill_and_restart_train_every_distinct_positive_once(settings: Settings) -> None:
    ensure_topics(settings)
    samples = stream(12_000, users=60, items=300, seed=11, negatives=0.3)
    rng = random.Random(3)
    duplicates = rng.sample(samples, 2000)  # the worker re-emitting after its own crash
    positives = {s.sample_id for s in samples if s.kind == "positive"}
    store = ModelStore(redis.Redis.from_url(settings.redis.effective_url), settings.redis.shards)
    log = settings.home / "logs" / "trainer.log"
    # batched records as the worker packs them, then the duplicates one per record (an older producer)
    _send(settings, samples, per_record=50)
    _send(settings, duplicates, per_record=1)
    with WorkerProcess(settings, log, args=("trainer",)) as first:
        first_checksum = _manifest_when(store, lambda m: m.samples_seen > 0).dense_checksum  # type: ignore[attr-defined]
        first.crash()
    killed_at = store.manifest(store.current() or "").samples_seen
    with WorkerProcess(settings, log, args=("trainer", "--until-idle", "3")) as second:
        assert second.wait(120) == 0, log.read_text()[-2000:]
    final = store.manifest(store.current() or "")
    assert 0 < killed_at < len(positives), "the first trainer was not killed mid-stream"
    assert final.samples_seen == len(positives), (killed_at, final.samples_seen, len(positives))
    assert final.dense_checksum == first_checksum  # the towers never moved
    assert final.evaluation.get("positives") and final.evaluation.get("auc") is not None
    users = store.all_rows("user", final.version)
    assert len(users) == len({s.user_id for s in samples if s.kind == "positive"})
