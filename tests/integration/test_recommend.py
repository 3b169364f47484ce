"""``recommend`` against the real Redis: top-k equals a brute force over the published item vectors minus
the user's exposures, the filter never empties the list, the HNSW index agrees with the exact search."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import redis

from filters.model_store import ModelStore
from infra.settings import Settings
from online_learning.learner import Learner
from online_learning.versions import ensure_version, publish_full
from serving.ann import ItemIndex
from serving.client import FeatureClient
from stream.exposure_writer import ExposureWriter
from tests.conftest import ServicePair
from tests.learning_data import stream

pytestmark = pytest.mark.integration


@pytest.fixture
def setup(redis_service: ServicePair, redis_client: redis.Redis,
          tmp_path: Path) -> tuple[Settings, FeatureClient, dict[str, np.ndarray]]:
    base = redis_service.settings
    settings = base.model_copy(update={"home": tmp_path, "learning": base.learning.model_copy(
        update={"max_users": 100, "max_items": 400, "batch_size": 64, "min_count": 1})})
    learner = Learner.fresh(settings.learning)
    samples = stream(1280, users=30, items=400, seed=8)
    for k in range(0, len(samples), 64):
        learner.train(samples[k:k + 64])
    version = publish_full(settings, ModelStore(redis_client, settings.redis.shards), learner, "full-t", None).version
    client = FeatureClient(settings=settings)
    yield settings, client, ModelStore(redis_client, settings.redis.shards).all_rows("vector", version)
    client.close()


def _exact(user_vec: np.ndarray, vectors: dict[str, np.ndarray], temperature: float) -> list[tuple[str, float]]:
    return sorted(((i, float(v @ user_vec) / temperature) for i, v in vectors.items()), key=lambda x: -x[1])


def _expose(redis_client: redis.Redis, settings: Settings, user: str, items: list[str]) -> None:
    now = int(time.time() * 1000)
    ExposureWriter(redis_client, settings).add({user: [(i, now) for i in items]}, now - 3_600_000)


def test_top_k_is_the_exact_top_minus_exposures(setup: tuple[Settings, FeatureClient, dict[str, np.ndarray]],
                                                redis_client: redis.Redis) -> None:
    settings, client, vectors = setup
    uv = client.user_vector("u3")
    exact = _exact(uv.vector, vectors, settings.learning.temperature)
    shown = [i for i, _ in exact[:3]]
    _expose(redis_client, settings, "u3", shown)
    rec = client.recommend("u3", k=10)
    assert rec.exact and rec.version == uv.version
    assert [i for i, _ in rec.items] == [i for i, _ in exact if i not in shown][:10]
    np.testing.assert_allclose([s for _, s in rec.items], [s for i, s in exact if i not in shown][:10], rtol=1e-4)


def test_the_filter_cannot_empty_the_list(setup: tuple[Settings, FeatureClient, dict[str, np.ndarray]],
                                          redis_client: redis.Redis) -> None:
    settings, client, vectors = setup
    exact = _exact(client.user_vector("u4").vector, vectors, settings.learning.temperature)
    _expose(redis_client, settings, "u4", [i for i, _ in exact[:60]])  # more than the first over-fetch
    rec = client.recommend("u4", k=5)
    assert [i for i, _ in rec.items] == [i for i, _ in exact[60:65]] and rec.fetched > 20


def test_explicit_candidates_are_ranked_and_filtered(setup: tuple[Settings, FeatureClient, dict[str, np.ndarray]],
                                                     redis_client: redis.Redis) -> None:
    settings, client, vectors = setup
    candidates = sorted(vectors)[:12]
    _expose(redis_client, settings, "u5", candidates[:2])
    rec = client.recommend("u5", k=4, candidates=candidates)
    scores = dict(zip(candidates, client.score("u5", candidates), strict=True))
    want = sorted((c for c in candidates[2:]), key=lambda c: -scores[c])[:4]
    assert [i for i, _ in rec.items] == want


def test_hnsw_index_agrees_with_exact_search() -> None:
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((5000, 32)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    index = ItemIndex([f"i{k}" for k in range(5000)], vecs, "v1", exact_below=1000)
    assert not index.exact
    hits = 0
    for q in rng.standard_normal((50, 32)).astype(np.float32):
        got = {i for i, _ in index.search(q, 20)}
        hits += len(got & {i for i, _ in index.exact_search(q, 20)})
    assert hits / (50 * 20) >= 0.9


def test_a_version_without_item_vectors_recommends_nothing(redis_service: ServicePair, redis_client: redis.Redis,
                                                          tmp_path: Path) -> None:
    settings = redis_service.settings.model_copy(update={"home": tmp_path})
    store = ModelStore(redis_client, settings.redis.shards)
    version = ensure_version(settings, store)  # a fresh install: the initial model, no trained item yet
    assert store.all_rows("vector", version) == {}
    client = FeatureClient(settings=settings)
    try:
        assert list(client.recommend("u1", 10).items) == []
        assert ItemIndex([], np.zeros((0, 32), np.float32), version).search(np.ones(32, np.float32), 5) == []
    finally:
        client.close()
