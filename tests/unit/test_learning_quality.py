"""bench.learning_quality on a tiny synthetic stream: the structure of the protocol, not its numbers.

The per-regime arrays are paired (same samples, same order), the frozen regime never trains within a day,
the incremental-only chain is never reset, ours restarts from the nightly model each day, days are UTC days
of event time, and the output table has one row per regime.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from bench import learning_quality as lq
from filters.labels import JoinConfig, Sample
from infra.settings import Settings
from online_learning.learner import Learner

CFG = Settings(learning={"batch_size": 32, "max_users": 2_000, "max_items": 2_000, "dim": 8, "category_dim": 4,
                         "hidden": 16})
TINY = argparse.Namespace(users=150, items=200, days=3.0, events=12_000, seed=3, data=Path("/nonexistent"))


def weights(learner: Learner) -> list[torch.Tensor]:
    return [p.detach().clone() for p in learner.model.embedding_parameters()]


@pytest.fixture(scope="module")
def days() -> list[tuple[int, list[Sample]]]:
    loaded = lq.load("synthetic", TINY)
    assert not isinstance(loaded, str)
    events, meta, info = loaded
    samples = lq.join_samples(events, meta, JoinConfig.from_settings(CFG), CFG.stats.allowed_lateness_ms)
    assert info["end_ms"] == lq.SYNTHETIC_START_MS + 3 * lq.MS_PER_DAY
    return lq.split_days(samples, info["end_ms"])


@pytest.fixture(scope="module")
def traced(days: list[tuple[int, list[Sample]]]) -> tuple[lq.Run, list[tuple[str, int, int, Learner, Any]]]:
    trace: list[tuple[str, int, int, Learner, Any]] = []

    def observer(regime: str, day: int, chunk: int, learner: Learner) -> None:
        trace.append((regime, day, chunk, learner, (learner.trained, weights(learner))))

    return lq.run_regimes(days, CFG.learning, observer=observer), trace


def test_days_are_utc_days_of_event_time(days: list[tuple[int, list[Sample]]]) -> None:
    assert [d for d, _ in days] == [lq.SYNTHETIC_START_MS // lq.MS_PER_DAY + k for k in range(3)]
    for day, samples in days:
        times = [lq.event_time(s) for s in samples]
        assert all(t // lq.MS_PER_DAY == day and t < lq.SYNTHETIC_START_MS + 3 * lq.MS_PER_DAY for t in times)
        assert times == sorted(times)
        assert {s.kind for s in samples} == {"positive", "impression"}
    impressions = [s for _, ss in days for s in ss if s.kind == "impression"]
    assert all(lq.event_time(s) == s.impression_ts for s in impressions)


def test_per_regime_arrays_are_aligned(days: list[tuple[int, list[Sample]]], traced: Any) -> None:
    run, _ = traced
    positives = sum(s.kind == "positive" for _, ss in days[1:] for s in ss)
    impressions = sum(s.kind == "impression" for _, ss in days[1:] for s in ss)
    assert len(run.pos_ts) == len(run.pos_day) == len(run.popular) == positives > 0
    assert len(run.labels) == len(run.imp_day) == impressions > 0
    for regime in lq.REGIMES:
        for series in lq.SERIES[:-1]:
            assert run.array(series, regime).shape == (positives,)
        assert run.array("scores", regime).shape == (impressions,)
    assert run.days == [d for d, _ in days[1:]]
    assert [t // lq.MS_PER_DAY for t in run.pos_ts] == run.pos_day  # evaluated on their own day


def test_frozen_never_trains_within_a_day(traced: Any) -> None:
    _, trace = traced
    by_day: dict[int, list[Any]] = {}
    for regime, day, _chunk, learner, (trained, w) in trace:
        if regime == lq.FROZEN:
            by_day.setdefault(day, []).append((learner, trained, w))
    assert len(by_day) == 2
    for entries in by_day.values():
        learner0, trained0, w0 = entries[0]
        assert len(entries) > 2
        for learner, trained, w in entries:
            assert learner is learner0 and trained == trained0
            assert all(torch.equal(a, b) for a, b in zip(w, w0, strict=True))
    (first, *_), (second, *_) = by_day.values()
    assert first[0] is not second[0], "a new nightly model each day"


def test_incremental_only_is_never_reset_and_ours_restarts_daily(traced: Any) -> None:
    _, trace = traced
    chain = [(learner, trained) for regime, _, _, learner, (trained, _) in trace if regime == lq.INCREMENTAL]
    assert len({id(learner) for learner, _ in chain}) == 1
    counts = [trained for _, trained in chain]
    assert counts == sorted(counts) and counts[-1] > counts[0]
    starts = {(regime, day): (learner, trained, w) for regime, day, chunk, learner, (trained, w) in trace
              if chunk == -1}
    for day in {day for _, day in starts}:
        ours, frozen = starts[(lq.OURS, day)], starts[(lq.FROZEN, day)]
        assert ours[0] is not frozen[0] and ours[1] == frozen[1]  # the same nightly model, two copies
        assert all(torch.equal(a, b) for a, b in zip(ours[2], frozen[2], strict=True))
    assert len({id(learner) for regime, _, _, learner, _ in trace if regime == lq.OURS}) == 2, "a copy a day"


def test_main_writes_one_row_per_regime(tmp_path: Path) -> None:
    lq.main(["--users", "150", "--items", "200", "--days", "3", "--events", "12000", "--seed", "3",
             "--datasets", "synthetic,mind", "--data", str(tmp_path / "no-mind"), "--out", str(tmp_path)])
    results = json.loads((tmp_path / "learning_quality.json").read_text())
    synthetic = results["datasets"]["synthetic"]
    assert set(synthetic["overall"]) == set(lq.REGIMES)
    assert "skipped" in results["datasets"]["mind"]
    assert (tmp_path / "learning_quality_synthetic.png").stat().st_size > 0
    table = lq.table(results["datasets"], lq.K)
    assert [row[:2] for row in table[1:]] == [["synthetic", r] for r in lq.REGIMES]
    md = (tmp_path / "learning_quality.md").read_text()
    assert sum(line.startswith("| synthetic | ") for line in md.split("## Differences")[0].splitlines()) == 3
    assert {d for d in synthetic["differences"]} == {f"{lq.OURS} vs {lq.FROZEN}", f"{lq.OURS} vs {lq.INCREMENTAL}"}
