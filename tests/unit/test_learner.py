"""The Learner on in-memory samples: new rows, touched rows, eviction, logQ counts, restart overlay."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from infra.keys import shard_of  # noqa: E402
from infra.settings import LearningSettings  # noqa: E402
from online_learning.learner import Learner, initial_rows  # noqa: E402
from tests.learning_data import stream  # noqa: E402

CFG = LearningSettings(max_users=40, max_items=120, max_categories=10, batch_size=32, min_count=2,
                       idle_evict_ms=60_000)


def _learner() -> Learner:
    return Learner.fresh(CFG)


def test_an_admitted_row_starts_from_its_seeded_initial_vector_with_a_fresh_accumulator() -> None:
    learner = _learner()
    learner.train(stream(64, users=10, items=40, seed=1)[:32])
    w = learner.model.user_emb.weight
    acc = learner.optimizer.state[w]["sum"]  # type: ignore[union-attr]
    acc[40] = 3.0  # as a row an evicted id left behind
    with torch.no_grad():
        w[40] = 1.0
    learner.tables.users._free.append(40)  # the last row (unused here) is handed out next
    learner.tables.users.observe(["newcomer", "newcomer"], ts=10**13)
    learner._apply_table_changes()
    row = learner.tables.users.rows(["newcomer"])[0]
    assert row == 40
    assert torch.equal(w[40], torch.from_numpy(initial_rows(["newcomer"], CFG.dim, CFG.seed)[0]))
    assert not torch.any(acc[40]) and not torch.equal(w[40], w[0])


def test_touched_rows_are_exactly_the_rows_trained_since_the_last_call() -> None:
    learner = _learner()
    samples = stream(96, users=12, items=50, seed=2)
    for k in range(0, 64, 32):
        learner.train(samples[k:k + 32])
    learner.touched_rows()
    batch = samples[64:96]
    learner.train(batch)
    rows = learner.touched_rows()
    t = learner.tables
    users_with_rows = {s.user_id for s in batch if s.user_id in t.users}
    assert set(rows.users.ids) == users_with_rows
    for k, user in enumerate(rows.users.ids):
        np.testing.assert_array_equal(rows.users.matrix[k], learner.model.user_emb.weight[t.users.rows([user])[0]]
                                      .detach().numpy())
    assert set(rows.items.ids) == set(rows.vectors.ids) == {s.item_id for s in batch if s.item_id in t.items}
    for family in (rows.users, rows.items):  # grouped by shard, as the publish writes them
        assert family.shards is not None and list(family.shards) == sorted(family.shards)
        assert list(family.shards) == [shard_of(i, learner.shards) for i in family.ids]
    assert learner.touched_rows().users.ids == []


def test_eviction_by_event_time_frees_rows_and_click_counts() -> None:
    learner = _learner()
    old = stream(64, users=8, items=20, seed=3, start_ts=1_000_000)
    for k in range(0, 64, 32):
        learner.train(old[k:k + 32])
    assert len(learner.tables.items) and learner.item_clicks.sum() > 0
    rows = [r for _, r in learner.tables.items.items()]
    learner.expire(1_000_000 + 64 * 100 + CFG.idle_evict_ms)
    assert len(learner.tables.items) == 0 and len(learner.tables.users) == 0
    assert not learner.item_clicks[rows].any()


def test_log_q_counts_follow_trained_positives() -> None:
    learner = _learner()
    samples = stream(64, users=8, items=20, seed=4)
    for k in range(0, 64, 32):
        learner.train(samples[k:k + 32])
    assert learner.item_clicks.sum() == 64
    assert learner.trained == 64 and learner.newest_ts == max(s.ts for s in samples)


def test_load_published_overlays_exact_rows() -> None:
    learner = _learner()
    vec = np.arange(CFG.dim, dtype=np.float32)
    learner.load_published({"u-new": vec}, {"i-new": -vec}, ts=5)
    u = learner.tables.users.rows(["u-new"])[0]
    i = learner.tables.items.rows(["i-new"])[0]
    assert u and i
    np.testing.assert_array_equal(learner.model.user_emb.weight[u].detach().numpy(), vec)
    np.testing.assert_array_equal(learner.model.item_emb.weight[i].detach().numpy(), -vec)


def test_evaluation_does_not_train_or_admit() -> None:
    learner = _learner()
    samples = stream(64, users=8, items=20, seed=5, negatives=0.5)
    positives = [s for s in samples if s.kind == "positive"]
    learner.train(positives[:32])
    learner.refresh_catalogue()
    before = [p.detach().clone() for p in learner.model.parameters()]
    rows_before = len(learner.tables.users), len(learner.tables.items)
    ranks = learner.rank_positives(positives[32:])
    scores = learner.score_impressions([s for s in samples if s.kind == "impression"])
    assert ranks.min() >= 1 and ranks.max() <= len(learner.catalogue_ids) + 1 and np.isfinite(scores).all()
    assert all(torch.equal(a, b) for a, b in zip(before, learner.model.parameters(), strict=True))
    assert (len(learner.tables.users), len(learner.tables.items)) == rows_before
