"""Pure time-slice / sub-slice maths: liveness, zero false negatives within retention, FPR budget, memory."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from filters.bloom import MAX_BITS_EXACT, optimal_bits
from filters.slices import (
    DAY,
    MAX_SUBSLICES,
    SlicePlan,
    SubParams,
    decode_params,
    slice_start,
)
from infra.errors import ConfigError
from infra.settings import Settings

HOUR = 3_600_000
PLAN = SlicePlan(fpr=0.01, slice_ms=DAY, retention_ms=30 * DAY, capacity=200)


@pytest.mark.parametrize(
    ("ts", "length", "start"),
    [(0, DAY, 0), (DAY - 1, DAY, 0), (DAY, DAY, DAY), (-1, DAY, -DAY), (-DAY, DAY, -DAY),
     (1_700_000_000_000, DAY, 1_699_920_000_000), (5 * HOUR, 2 * HOUR, 4 * HOUR)],
)
def test_slice_start(ts: int, length: int, start: int) -> None:
    assert slice_start(ts, length) == start


@pytest.mark.parametrize(
    ("start", "at", "live"),
    [
        (0, 0, True),                    # the slice of `at` itself
        (0, -1, False),                  # a slice starting after `at`
        (0, DAY - 1, True),
        (0, 31 * DAY - 1, True),         # last ms: end (DAY) > at - 30 days
        (0, 31 * DAY, False),            # whole slice older than 30 days: forgotten
        (10 * DAY, 40 * DAY + 5, True),  # oldest live slice
        (9 * DAY, 40 * DAY + 5, False),
    ],
)
def test_is_live(start: int, at: int, live: bool) -> None:
    assert PLAN.is_live(start, at) is live


@pytest.mark.parametrize(
    ("slice_hours", "retention_days", "count"),
    [(24, 30, 31), (48, 30, 16), (72, 30, 11), (168, 30, 6), (1, 1, 25), (24, 1, 2)],
)
def test_live_slice_count(slice_hours: int, retention_days: int, count: int) -> None:
    plan = SlicePlan(0.01, slice_hours * HOUR, retention_days * DAY, 200)
    assert plan.live_slices == count
    for at in (0, 1, 5 * HOUR + 7, 123 * DAY + 11 * HOUR, -3 * DAY):
        starts = plan.live_starts(at)
        assert len(starts) <= count
        assert all(plan.is_live(s, at) for s in starts)
        assert not plan.is_live(starts[0] - plan.slice_ms, at)
        assert not plan.is_live(starts[-1] + plan.slice_ms, at)


@given(
    ts=st.integers(-(10**13), 10**13),
    age=st.integers(0, 60 * DAY),
    slice_hours=st.sampled_from([1, 5, 24, 48, 168]),
)
def test_no_exposure_forgotten_within_retention(ts: int, age: int, slice_hours: int) -> None:
    """An exposure at ts is live for every at in [ts, ts + R); forgotten once its slice ends before at − R."""
    plan = SlicePlan(0.01, slice_hours * HOUR, 30 * DAY, 200)
    at = ts + age
    start = plan.start_of(ts)
    live = plan.is_live(start, at)
    if age < plan.retention_ms:
        assert live
        assert start in plan.live_starts(at)
    assert live == (at < start + plan.slice_ms + plan.retention_ms)
    assert plan.expired(start + plan.slice_ms, at) == (not live)


def test_slice_budget_compounds_to_query_budget() -> None:
    s = PLAN.live_slices
    assert 1 - (1 - PLAN.slice_fpr) ** s == pytest.approx(0.01, rel=1e-9)
    assert PLAN.slice_fpr == pytest.approx(0.01 / 31, rel=0.01)


def test_sub_slice_budget_sums_below_slice_budget() -> None:
    total = sum(PLAN.sub_fpr(i) for i in range(200))
    assert total <= PLAN.slice_fpr
    assert total == pytest.approx(PLAN.slice_fpr, rel=1e-9)
    assert PLAN.sub_fpr(0) == pytest.approx(0.95 * PLAN.slice_fpr)  # design load spends almost all of it


def test_sub_slice_table() -> None:
    table = PLAN.table
    assert len(table) == MAX_SUBSLICES
    assert table[0].capacity == 200
    assert [p.capacity for p in table[:5]] == [200, 400, 800, 1600, 3200]
    assert all(p.m <= MAX_BITS_EXACT and p.k >= 1 for p in table)
    assert all(a.fpr > b.fpr for a, b in itertools.pairwise(table))
    assert PLAN.sub(10_000) == table[-1]


def test_bits_per_item_close_to_optimum() -> None:
    """Sub-slice 0 costs ≤ 1.02× the optimal bits for 200 items at the whole slice budget."""
    p0 = PLAN.sub(0)
    assert p0.m / optimal_bits(200, PLAN.slice_fpr) <= 1.02
    assert p0.m / optimal_bits(200, p0.fpr) <= 1.001
    assert 8 * p0.nbytes / 200 == pytest.approx(16.84, abs=0.01)


@pytest.mark.parametrize(
    ("items", "subs"),
    [(0, 1), (1, 1), (200, 1), (201, 2), (600, 2), (601, 3), (1400, 3), (1401, 4), (2000, 4)],
)
def test_subs_for(items: int, subs: int) -> None:
    assert PLAN.subs_for(items) == subs


@pytest.mark.parametrize("per_slice", [0, 1, 100, 200, 201, 2000, 20_000, 200_000, 1_000_000])
def test_query_fpr_within_budget_for_any_load(per_slice: int) -> None:
    assert PLAN.expected_query_fpr(per_slice) <= 0.01


def test_design_load_spends_budget_in_sub_slice_zero() -> None:
    assert PLAN.expected_query_fpr(200) == pytest.approx(0.0095, abs=0.0003)
    assert PLAN.bytes_for(200) == PLAN.sub(0).nbytes


@pytest.mark.parametrize(
    ("slice_hours", "ratio"), [(24, 1.82), (48, 1.72), (72, 1.69), (120, 1.67), (168, 1.96)]
)
def test_memory_ratio_vs_one_month_filter(slice_hours: int, ratio: float) -> None:
    plan = SlicePlan(0.01, slice_hours * HOUR, 30 * DAY, 200 * slice_hours // 24)
    assert plan.memory_ratio() == pytest.approx(ratio, abs=0.01)


def test_from_settings_defaults() -> None:
    plan = SlicePlan.from_settings(Settings().bloom)
    assert (plan.fpr, plan.slice_ms, plan.retention_ms, plan.capacity) == (0.01, DAY, 30 * DAY, 200)


@pytest.mark.parametrize(
    "kwargs",
    [{"fpr": 0.0}, {"fpr": 0.6}, {"slice_ms": 0}, {"retention_ms": 0}, {"capacity": 0}],
)
def test_invalid_plan(kwargs: dict[str, float]) -> None:
    base: dict[str, float] = {"fpr": 0.01, "slice_ms": DAY, "retention_ms": 30 * DAY, "capacity": 200}
    base.update(kwargs)
    with pytest.raises(ConfigError):
        SlicePlan(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("raw", ["3367,12,200", b"1,1,1", "2095468,25,58290"])
def test_params_roundtrip(raw: str | bytes) -> None:
    m, k, cap = decode_params(raw)
    text = raw.decode() if isinstance(raw, bytes) else raw
    assert SubParams(m, k, cap, 0.0).encode() == text
