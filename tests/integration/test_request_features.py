"""``request_features`` against the real Redis, fed by the real ingest stage: every family equals what the
client's single-family reads return (each of those is tested against a brute-force reference in its own
issue's tests), in at most two round trips, from one model version even when the pointer moves."""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import pytest
import redis

from filters.events import Event, encode_batch
from filters.model_store import ModelStore
from infra.settings import Settings
from online_learning.learner import Learner
from online_learning.versions import publish_full
from serving.client import FeatureClient
from serving.request import FeatureSpec
from stream.batching import KeyPartitioner
from stream.ingest import IngestStage, Record
from tests.conftest import ServicePair
from tests.learning_data import stream

pytestmark = pytest.mark.integration


def _events(now: int) -> list[Event]:
    rng = random.Random(5)
    out = []
    for k in range(3000):
        user, item = f"u{rng.randrange(12)}", f"i{rng.randrange(150)}"
        ts = now - rng.randrange(3 * 86_400_000)
        kind = rng.choice(["impression"] * 6 + ["click", "like", "collect"])
        out.append(Event(event_id=f"e{k}", type=kind, user_id=user, item_id=item, ts=ts))
    return sorted(out, key=lambda e: e.ts)


@pytest.fixture
def client(redis_service: ServicePair, redis_client: redis.Redis, tmp_path: Path) -> FeatureClient:
    base = redis_service.settings
    settings: Settings = base.model_copy(update={
        "home": tmp_path, "join": base.join.model_copy(update={"enabled": False}),
        "learning": base.learning.model_copy(update={"max_users": 100, "max_items": 400, "min_count": 1})})
    now = int(time.time() * 1000)
    place = KeyPartitioner(settings.kafka.partitions)
    parts: dict[int, list[Event]] = {}
    for e in _events(now):
        parts.setdefault(place(e.user_id), []).append(e)
    stage = IngestStage(redis_client, settings)
    for p, evs in parts.items():
        stage.process([Record(settings.kafka.events_topic, p, 0, None, encode_batch(evs))]).commit()
    learner = Learner.fresh(settings.learning)
    samples = stream(640, users=12, items=150, seed=9)
    for k in range(0, 640, 64):
        learner.train(samples[k:k + 64])
    publish_full(settings, ModelStore(redis_client, settings.redis.shards), learner, "full-a", None)
    c = FeatureClient(settings=settings)
    yield c
    c.close()


def test_every_family_equals_the_single_family_reads(client: FeatureClient) -> None:
    candidates = [f"i{k}" for k in range(150)] + ["never-seen"]
    at = int(time.time() * 1000)
    for user in ("u1", "u5", "u11", "nobody"):
        f = client.request_features(user, candidates, FeatureSpec(metadata=False), at=at)
        assert f.round_trips == (1 if user == "nobody" else 2) and f.model_version == client.model_version()
        assert f.unseen is not None
        assert [c for c, u in zip(candidates, f.unseen, strict=True) if u] == client.filter_unseen(user, candidates, at)
        assert f.last_n == client.last_n_multi(user, {"click": 50, "like": 50, "collect": 50})
        np.testing.assert_array_equal(f.user_stats.values, client.stats_multi("user", [user], at=at).values)
        np.testing.assert_array_equal(f.candidate_stats.values, client.stats_multi("item", candidates, at=at).values)
        np.testing.assert_allclose(f.user_vector, client.user_vector(user).vector, atol=1e-6)
        np.testing.assert_allclose(f.scores, client.score(user, candidates), rtol=1e-5, atol=1e-5)
        assert f.freshness["features_ms"] > 0 and f.freshness["embeddings_ms"] > 0


def test_one_round_trip_without_the_model_and_empty_families(client: FeatureClient) -> None:
    f = client.request_features("u2", ["i1"], FeatureSpec(user_vector=False, scores=False, last_n={}))
    assert f.round_trips == 1 and f.user_vector is None and f.scores is None and f.last_n == {}


def test_a_version_switch_between_requests_is_followed(client: FeatureClient, tmp_path: Path) -> None:
    client.request_features("u3", ["i1", "i2"])  # caches the first version
    learner = Learner.fresh(client.settings.learning)
    samples = stream(320, users=12, items=150, seed=10)
    for k in range(0, 320, 64):
        learner.train(samples[k:k + 64])
    new = publish_full(client.settings, ModelStore(client.redis, client.settings.redis.shards), learner, "full-b",
                       "v000001").version
    f = client.request_features("u3", ["i1", "i2"])
    assert f.model_version == new
    np.testing.assert_allclose(f.user_vector, client.user_vector("u3").vector, atol=1e-6)
