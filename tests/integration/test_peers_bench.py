"""bench.peers_bench's three peers at tiny size against the session Redis: each peer must hold or answer the
same features as recstream for the same events — what makes the side-by-side comparison fair (no timings)."""

from __future__ import annotations

import pytest
import redis

from bench.peers_learning import run_size
from bench.peers_reads import SPEC, FeastStyle, feast_matches, run_reads
from bench.peers_writes import AT, Workload, compare, make_workload, run_writes
from infra.settings import LearningSettings, Settings
from serving.client import FeatureClient

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def workload() -> Workload:
    return make_workload(600)


@pytest.fixture
def settings(redis_service: object) -> Settings:
    base: Settings = redis_service.settings  # type: ignore[attr-defined]
    return base.model_copy(update={"join": base.join.model_copy(update={"enabled": False})})


@pytest.mark.parametrize("naive", ["naive-batch", "naive-event", "naive-command"])
def test_naive_writes_hold_the_same_features_as_recstream(redis_client: redis.Redis, settings: Settings,
                                                           workload: Workload, naive: str) -> None:
    runs = run_writes(redis_client, settings, workload.events, 1, ("recstream", naive))
    assert all(r[0]["commands_per_event"] > 0 for r in runs.values())
    check = compare(redis_client, settings, workload.events)
    users, cells, exposure = check["last_n_users"], check["stats_cells"], check["exposure_seen_by_both"]
    assert users[0] == users[1] == len({ev.user_id for ev in workload.events})
    assert check["last_n_entries"] > 0
    assert cells[0] == cells[1] > 0
    assert exposure[0] == exposure[1] == sum(ev.type == "impression" for ev in workload.events)


def test_feast_style_reads_answer_what_request_features_answers(redis_client: redis.Redis, settings: Settings,
                                                                 workload: Workload) -> None:
    run_writes(redis_client, settings, workload.events, 1, ("recstream",))
    users = sorted({ev.user_id for ev in workload.events})
    res = run_reads(redis_client, settings, users, workload.items, [30], requests=4)
    assert res["sizes"]["30"]["equal_answers"] == [4, 4]
    clicked = next(ev for ev in workload.events if ev.type == "click")
    items = sorted({ev.item_id for ev in workload.events})[:40]
    ours = FeatureClient(settings=settings).request_features(clicked.user_id, items, SPEC, at=AT)
    theirs = FeastStyle(redis_client, settings).request(clicked.user_id, items)
    assert ours.last_n["click"] and ours.candidate_stats is not None and ours.candidate_stats.values.any()
    assert feast_matches(ours, theirs)


def test_sparse_and_dense_updates_start_equal_and_publish_what_they_changed() -> None:
    out = run_size(rows=400, steps=4, cfg=LearningSettings(batch_size=64))
    ours, dense = out["sides"].values()
    # same weights, same batch (ours computes the loss by hand, online_learning.frozen_step: float rounding)
    assert ours["first_loss"] == pytest.approx(dense["first_loss"], rel=1e-5)
    assert ours["rows_changed_in_window"] == out["rows_in_window_batches"]  # only the rows it touched
    assert all(dense["rows_changed_in_window"][k] >= n for k, n in out["rows_in_window_batches"].items())
    assert not ours["towers_changed"] and dense["towers_changed"]
    assert dense["optimizer_state_bytes"] > ours["optimizer_state_bytes"]
