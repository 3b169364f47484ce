"""``request_features`` against the real Redis, fed by the real ingest stage: every family equals what the
client's single-family reads return (each of those is tested against a brute-force reference in its own
issue's tests), in at most two round trips, from one model version even when the pointer moves."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis

from serving.client import FeatureClient
from serving.request import FeatureSpec
from tests.conftest import ServicePair
from tests.serving_data import populate, train_and_publish

pytestmark = pytest.mark.integration


@pytest.fixture
def client(redis_service: ServicePair, redis_client: redis.Redis, tmp_path: Path) -> Iterator[FeatureClient]:
    c = FeatureClient(settings=populate(redis_service.settings, redis_client, tmp_path))
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
    new = train_and_publish(client.settings, client.redis, seed=10, model_id="full-b", parent="v000001")
    f = client.request_features("u3", ["i1", "i2"])
    assert f.model_version == new
    np.testing.assert_allclose(f.user_vector, client.user_vector("u3").vector, atol=1e-6)
