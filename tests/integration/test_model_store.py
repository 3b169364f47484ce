"""Model versions against the real Redis: full publish, deltas, resume, serving's numpy towers, version
switches under concurrent readers, rollback."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import redis
import torch

from filters.model_store import ModelStore
from infra.settings import Settings
from online_learning.learner import Learner
from online_learning.publish import ModelPublisher
from online_learning.versions import ensure_version, publish_full, resume
from serving.client import FeatureClient
from tests.conftest import ServicePair
from tests.learning_data import stream

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(redis_service: ServicePair, redis_client: redis.Redis, tmp_path: Path) -> Settings:
    base = redis_service.settings
    return base.model_copy(update={"home": tmp_path, "learning": base.learning.model_copy(
        update={"max_users": 100, "max_items": 300, "batch_size": 64, "min_count": 1})})


def _trained(settings: Settings, seed: int, n: int = 640) -> Learner:
    learner = Learner.fresh(settings.learning)
    samples = stream(n, seed=seed)
    for k in range(0, n, 64):
        learner.train(samples[k:k + 64])
    return learner


def _store(settings: Settings) -> ModelStore:
    return ModelStore(redis.Redis.from_url(settings.redis.effective_url), settings.redis.shards)


def test_first_version_is_created_once(settings: Settings) -> None:
    store = _store(settings)
    first = ensure_version(settings, store)
    assert ensure_version(settings, store) == first == store.current()
    assert store.manifest(first).model_id == "init"


def test_resume_restores_published_rows_after_the_checkpoint(settings: Settings) -> None:
    store = _store(settings)
    learner = _trained(settings, seed=1)
    manifest = publish_full(settings, store, learner, "full-test", None)
    learner.touched_rows()  # the full publish carried every row
    for batch in (stream(128, seed=2, start_ts=1_800_000_000_000)[k:k + 64] for k in (0, 64)):
        learner.train(batch)
    rows = learner.touched_rows()
    assert rows.users.ids, "training touched no user row"
    ModelPublisher(store, 3).publish_delta(manifest, rows)
    resumed, _ = resume(settings, store, manifest.version)
    for table, got, want in (("users", resumed.model.user_emb.weight, learner.model.user_emb.weight),
                             ("items", resumed.model.item_emb.weight, learner.model.item_emb.weight)):
        ids = rows.users.ids if table == "users" else rows.items.ids
        mine = getattr(learner.tables, table).rows(ids)
        theirs = getattr(resumed.tables, table).rows(ids)
        assert 0 not in theirs
        assert torch.equal(got[theirs], want[mine]), table


def test_serving_numpy_towers_match_torch(settings: Settings) -> None:
    learner = _trained(settings, seed=3)
    publish_full(settings, _store(settings), learner, "full-test", None)
    client = FeatureClient(settings=settings)
    try:
        for user in ("u1", "u7", "never-seen"):
            uv = client.user_vector(user)  # no click sequences in this Redis: empty history on both sides
            rows = learner.tables.users.rows([user])
            with torch.no_grad():
                want = learner.model.user_vectors(torch.tensor(rows), torch.tensor([], dtype=torch.int64),
                                                  torch.tensor([0])).numpy()[0]
            np.testing.assert_allclose(uv.vector, want, atol=1e-5)
            assert uv.own_row == (rows[0] != 0)
        scores = client.score("u1", ["i0", "i1", "nope"])
        assert scores[2] == 0.0 and all(abs(s) <= 1 / settings.learning.temperature + 1e-4 for s in scores)
    finally:
        client.close()


def _torch_user_vector(learner: Learner, user: str) -> np.ndarray:
    rows = learner.tables.users.rows([user])
    with torch.no_grad():
        return learner.model.user_vectors(torch.tensor(rows), torch.tensor([], dtype=torch.int64),
                                          torch.tensor([0])).numpy()[0]


def _hammer(client: FeatureClient, expected: dict[str, np.ndarray], stop: threading.Event,
            problems: list[str], reads: list[int]) -> None:
    while not stop.is_set():
        uv = client.user_vector("u3")
        want = expected.get(uv.version)
        if want is None or not np.allclose(uv.vector, want, atol=1e-5):
            problems.append(f"{uv.version}: not the vector published under it")
        reads.append(1)


def test_version_switch_under_readers_and_rollback(settings: Settings) -> None:
    store = _store(settings)
    learners = [_trained(settings, seed=s) for s in (4, 5, 6)]
    expected = {f"v{k + 1:06d}": _torch_user_vector(learner, "u3") for k, learner in enumerate(learners)}
    client = FeatureClient(settings=settings)
    publish_full(settings, store, learners[0], "full-a", None)
    before = client.user_vector("u3").vector.copy()
    stop, problems, reads = threading.Event(), [], []
    threads = [threading.Thread(target=_hammer, args=(client, expected, stop, problems, reads)) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for k, learner in enumerate(learners[1:], start=2):
            assert publish_full(settings, store, learner, f"full-{k}", f"v{k - 1:06d}").version == f"v{k:06d}"
        ModelPublisher(store, 3).rollback("v000001")
        stop.wait(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join()
    after = client.user_vector("u3")
    client.close()
    assert len(reads) > 20 and not problems, problems[:3]
    assert after.version == "v000001" and np.array_equal(after.vector, before)  # rollback: exactly as before


def test_rollback_to_an_unknown_version_is_one_clear_error(settings: Settings) -> None:
    from infra.errors import ModelError

    store = _store(settings)
    ensure_version(settings, store)
    with pytest.raises(ModelError, match="not kept"):
        ModelPublisher(store, 3).rollback("v999999")

