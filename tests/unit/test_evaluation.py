"""Prequential evaluation (online_learning.evaluation) against brute-force references written here."""

from __future__ import annotations

import json
import math
from collections import deque
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from online_learning.bootstrap import paired_bootstrap, paired_bootstrap_auc
from online_learning.evaluation import (
    MetricsLog,
    PlattScaler,
    Prequential,
    SlidingWindow,
    auc,
    logloss,
    rank_of_targets,
    recall_at,
    reciprocal_rank,
)


def brute_ranks(users: list[list[float]], items: list[list[float]], targets: list[int],
                exclude: list[list[int]] | None = None) -> list[int]:
    """Sort the items by score in plain Python; the target's rank is 1 + the items strictly above it."""
    ranks = []
    for i, (u, t) in enumerate(zip(users, targets, strict=True)):
        if t == -1:
            ranks.append(len(items) + 1)
            continue
        out = set(exclude[i]) if exclude is not None else set()
        scored = sorted(((sum(a * b for a, b in zip(u, v, strict=True)), j) for j, v in enumerate(items)
                         if j == t or j not in out), reverse=True)
        own = next(s for s, j in scored if j == t)
        ranks.append(1 + sum(1 for s, j in scored if j != t and s > own))
    return ranks


def brute_auc(scores: list[float], labels: list[int]) -> float:
    """Every (positive, negative) pair: 1 if the positive scores higher, 1/2 on a tie."""
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    if not pos or not neg:
        return math.nan
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def brute_logloss(p: list[float], labels: list[int], eps: float = 1e-7) -> float:
    total = 0.0
    for q, y in zip(p, labels, strict=True):
        q = min(max(q, eps), 1 - eps)
        total += -math.log(q) if y else -math.log(1 - q)
    return total / len(p)


# ---- rank_of_targets ---------------------------------------------------------------------------------------

small_ints = st.integers(-3, 3).map(float)  # exact in float32 whatever the summation order: ties are ties


@st.composite
def ranking_cases(draw: st.DrawFn) -> tuple[list[list[float]], list[list[float]], list[int],
                                             list[list[int]] | None, int]:
    d = draw(st.integers(1, 4))
    n = draw(st.integers(1, 40))
    b = draw(st.integers(1, 6))
    vec = st.lists(small_ints, min_size=d, max_size=d)
    users, items = draw(st.lists(vec, min_size=b, max_size=b)), draw(st.lists(vec, min_size=n, max_size=n))
    targets = draw(st.lists(st.integers(-1, n - 1), min_size=b, max_size=b))
    exclude = None
    if draw(st.booleans()):
        m = draw(st.integers(0, 5))
        exclude = draw(st.lists(st.lists(st.integers(-1, n - 1), min_size=m, max_size=m), min_size=b, max_size=b))
    return users, items, targets, exclude, draw(st.sampled_from([1, 2, 3, 7, 16, 64]))


@given(ranking_cases())
@settings(max_examples=300, deadline=None)
def test_rank_equals_sorting_in_plain_python(case: tuple[list[list[float]], list[list[float]], list[int],
                                                         list[list[int]] | None, int]) -> None:
    users, items, targets, exclude, chunk = case
    got = rank_of_targets(np.array(users), np.array(items), np.array(targets),
                          None if exclude is None else np.array(exclude, dtype=np.int64).reshape(len(users), -1),
                          chunk=chunk)
    assert got.dtype == np.int64 and got.shape == (len(users),)
    assert got.tolist() == brute_ranks(users, items, targets, exclude)


@pytest.mark.parametrize(("n", "chunk"), [(1, 8), (7, 8), (8, 8), (9, 8), (16, 8), (17, 8), (23, 1), (100, 65_536),
                                          (5, 3)])
def test_rank_is_the_same_whatever_the_chunking(n: int, chunk: int) -> None:
    rng = np.random.default_rng(n * 1000 + chunk)
    items = rng.integers(-4, 5, size=(n, 3)).astype(np.float32)
    users = rng.integers(-4, 5, size=(6, 3)).astype(np.float32)
    targets = rng.integers(-1, n, size=6)
    targets[0], targets[1] = n - 1, 0  # the last item (in the short last chunk) and the first
    exclude = rng.integers(-1, n, size=(6, 4))
    for ex in (None, exclude):
        got = rank_of_targets(users, items, targets, ex, chunk=chunk)
        assert got.tolist() == brute_ranks(users.tolist(), items.tolist(), targets.tolist(),
                                           None if ex is None else ex.tolist())
        assert got.tolist() == rank_of_targets(users, items, targets, ex, chunk=max(n, 1)).tolist()


def test_rank_of_float_vectors_matches_a_float64_sort_and_the_default_chunk() -> None:
    rng = np.random.default_rng(7)
    items, users = rng.normal(size=(3000, 16)), rng.normal(size=(20, 16))
    targets = rng.integers(0, 3000, size=20)
    lo, hi = [], []  # float32 rounding may put items within 1e-4 of the target on either side
    for u, t in zip(users, targets, strict=True):
        others = np.delete(items @ u, t)  # the target never beats itself
        lo.append(1 + int(np.sum(others > items[t] @ u + 1e-4)))
        hi.append(1 + int(np.sum(others > items[t] @ u - 1e-4)))
    got = rank_of_targets(users, items, targets, chunk=256)
    assert np.all((np.array(lo) <= got) & (got <= np.array(hi))) and sum(hi) - sum(lo) <= 2
    assert rank_of_targets(users, items, targets).tolist() == got.tolist()


@pytest.mark.parametrize(("exclude", "want"), [
    (None, [3, 1]),
    (np.array([[0, -1], [-1, -1]]), [2, 1]),
    (np.array([[0, 1], [2, 2]]), [1, 1]),   # duplicates and the target itself in exclude are harmless
    (np.array([0, 1]), [1, 1]),             # one list for every row
])
def test_exclude_removes_items_from_each_rows_competition(exclude: np.ndarray | None, want: list[int]) -> None:
    items = np.array([[3.0], [2.0], [1.0]])
    assert rank_of_targets(np.array([[1.0], [-1.0]]), items, np.array([2, 2]), exclude).tolist() == want


def test_ties_are_optimistic_and_misses_rank_past_the_end() -> None:
    items = np.ones((10, 4))
    assert rank_of_targets(np.ones((3, 4)), items, np.array([0, 9, -1]), chunk=3).tolist() == [1, 1, 11]
    assert recall_at(np.array([11]), 10).tolist() == [0.0]
    empty = rank_of_targets(np.ones((2, 4)), np.zeros((0, 4)), np.array([-1, -1]))  # an empty catalogue
    assert empty.tolist() == [1, 1] and recall_at(empty, 10, n_items=0).tolist() == [0.0, 0.0]


@pytest.mark.parametrize(("users", "items", "targets", "kw"), [
    (np.ones((2, 3)), np.ones((4, 2)), np.array([0, 1]), {}),          # dimensions differ
    (np.ones((2, 3)), np.ones((4, 3)), np.array([0]), {}),             # one target per row
    (np.ones((2, 3)), np.ones((4, 3)), np.array([0, 4]), {}),          # target out of range
    (np.ones((2, 3)), np.ones((4, 3)), np.array([0, -2]), {}),
    (np.ones((2, 3)), np.ones((4, 3)), np.array([0, 1]), {"chunk": 0}),
    (np.ones((2, 3)), np.ones((4, 3)), np.array([0, 1]), {"exclude": np.array([[5], [0]])}),
    (np.ones((2, 3)), np.ones((4, 3)), np.array([0, 1]), {"exclude": np.array([[0], [1], [2]])}),
])
def test_rank_rejects_bad_input(users: np.ndarray, items: np.ndarray, targets: np.ndarray,
                                kw: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        rank_of_targets(users, items, targets, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(("ranks", "k", "n_items", "recall", "rr"), [
    ([1, 2, 10, 11], 10, None, [1, 1, 1, 0], [1, 0.5, 0.1, 1 / 11]),
    ([1, 2, 10, 11], 1, 10, [1, 0, 0, 0], [1, 0.5, 0.1, 0]),
    ([1, 2, 3, 4], 10, 3, [1, 1, 1, 0], [1, 0.5, 1 / 3, 0]),  # k beyond the catalogue: a miss stays a miss
    ([], 5, None, [], []),
])
def test_recall_and_reciprocal_rank(ranks: list[int], k: int, n_items: int | None, recall: list[float],
                                    rr: list[float]) -> None:
    assert recall_at(np.array(ranks, dtype=np.int64), k, n_items).tolist() == recall
    assert reciprocal_rank(np.array(ranks, dtype=np.int64), n_items).tolist() == pytest.approx(rr)


# ---- auc, logloss ------------------------------------------------------------------------------------------

@given(st.lists(st.tuples(st.integers(-3, 3).map(lambda v: v / 2), st.booleans()), max_size=60))
@settings(max_examples=300, deadline=None)
def test_auc_equals_counting_all_pairs(rows: list[tuple[float, bool]]) -> None:
    scores, labels = [s for s, _ in rows], [int(y) for _, y in rows]
    want, got = brute_auc(scores, labels), auc(np.array(scores), np.array(labels))
    assert (math.isnan(want) and math.isnan(got)) or got == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize(("scores", "labels", "want"), [
    ([0.1, 0.2, 0.3, 0.4], [0, 0, 1, 1], 1.0),
    ([0.4, 0.3, 0.2, 0.1], [0, 0, 1, 1], 0.0),
    ([0.5, 0.5, 0.5], [0, 1, 1], 0.5),
    ([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1], 0.75),
    ([1.0, 2.0], [True, False], 0.0),
    ([1.0, 2.0], [1, 1], math.nan),
    ([], [], math.nan),
])
def test_auc_table(scores: list[float], labels: list[int], want: float) -> None:
    got = auc(np.array(scores), np.array(labels))
    assert (math.isnan(want) and math.isnan(got)) or got == want


def test_auc_of_a_large_random_sample_matches_pairs() -> None:
    rng = np.random.default_rng(3)
    s, y = rng.integers(0, 50, size=800) / 10, rng.random(800) < 0.3
    assert auc(s, y) == pytest.approx(brute_auc(s.tolist(), y.astype(int).tolist()), abs=1e-12)
    with pytest.raises(ValueError):
        auc(s, y[:-1])


@pytest.mark.parametrize(("p", "labels"), [
    ([0.9, 0.2], [1, 0]),
    ([0.0, 1.0], [1, 0]),            # clipped to eps: finite
    ([0.0, 1.0], [0, 1]),
    ([0.5] * 7, [1, 0, 1, 1, 0, 0, 1]),
    ([1e-9, 0.3, 0.999999999], [0, 1, 1]),
])
def test_logloss_equals_a_plain_loop(p: list[float], labels: list[int]) -> None:
    assert logloss(np.array(p), np.array(labels)) == pytest.approx(brute_logloss(p, labels), rel=1e-9)
    assert logloss(np.array(p), np.array(labels), eps=1e-3) == pytest.approx(brute_logloss(p, labels, 1e-3))


def test_logloss_edge_cases() -> None:
    assert math.isnan(logloss(np.array([]), np.array([])))
    with pytest.raises(ValueError):
        logloss(np.array([0.5]), np.array([1, 0]))


# ---- PlattScaler -------------------------------------------------------------------------------------------

def logistic_batches(a: float, b: float, batches: int, size: int = 500,
                     seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(batches):
        s = rng.normal(scale=2.0, size=size)
        out.append((s, (rng.random(size) < 1 / (1 + np.exp(-(a * s + b)))).astype(np.int64)))
    return out


def test_platt_starts_as_the_plain_sigmoid() -> None:
    cal = PlattScaler()
    assert (cal.a, cal.b) == (1.0, 0.0)
    s = np.array([-30.0, -1.0, 0.0, 2.0, 800.0])
    assert cal.predict(s) == pytest.approx(1 / (1 + np.exp(-s)))


@pytest.mark.parametrize(("a", "b"), [(3.0, -1.0), (0.5, 0.5), (-2.0, 0.0), (1.0, -4.0)])
def test_platt_converges_to_the_generating_parameters(a: float, b: float) -> None:
    cal = PlattScaler()
    for s, y in logistic_batches(a, b, 40):
        cal.update(s, y)
    assert cal.a == pytest.approx(a, abs=0.2 * max(1, abs(a)))
    assert cal.b == pytest.approx(b, abs=0.25)


def test_platt_on_separable_ish_data_sharpens_and_beats_the_raw_sigmoid() -> None:
    rng = np.random.default_rng(1)
    cal, losses = PlattScaler(), []
    for _ in range(30):
        y = rng.random(400) < 0.2
        s = np.where(y, 0.3, -0.3) + rng.normal(scale=0.05, size=400)  # margin of 6 sigma: almost separable
        losses.append((logloss(cal.predict(s), y), logloss(1 / (1 + np.exp(-s)), y)))
        cal.update(s, y)
    assert cal.a > 10 and np.isfinite([cal.a, cal.b]).all()
    assert losses[-1][0] < 0.05 < losses[-1][1]


def test_platt_is_deterministic_and_predict_does_not_learn() -> None:
    one, two = PlattScaler(), PlattScaler()
    for s, y in logistic_batches(2.0, 1.0, 5):
        before = one.predict(s)
        assert one.predict(s).tolist() == before.tolist()
        one.update(s, y)
        two.update(s, y)
    assert (one.a, one.b) == (two.a, two.b)
    a, b = one.a, one.b
    one.update(np.array([]), np.array([]))
    assert (one.a, one.b) == (a, b)


def test_platt_follows_drift_within_its_memory() -> None:
    cal = PlattScaler(memory=2_000)
    for s, y in logistic_batches(1.0, 0.0, 20) + logistic_batches(4.0, -2.0, 20, seed=1):
        cal.update(s, y)
    assert cal.a == pytest.approx(4.0, abs=0.6) and cal.b == pytest.approx(-2.0, abs=0.4)
    assert cal._seen.count("score") == 2_000  # bounded: it fits the newest 2,000 impressions only


# ---- SlidingWindow -----------------------------------------------------------------------------------------

@given(st.integers(1, 9), st.lists(st.tuples(st.sampled_from(["x", "y"]),
                                             st.lists(st.integers(-100, 100), max_size=25)), max_size=30))
@settings(max_examples=200, deadline=None)
def test_sliding_window_equals_bounded_deques(size: int, extends: list[tuple[str, list[int]]]) -> None:
    w, ref = SlidingWindow(size), {"x": deque(maxlen=size), "y": deque(maxlen=size)}  # type: ignore[var-annotated]
    for name, values in extends:
        w.extend(name, np.array(values, dtype=np.float64))
        ref[name].extend(values)
        for n, d in ref.items():
            assert w.values(n).tolist() == list(d)
            assert w.count(n) == len(d)
            assert (math.isnan(w.mean(n)) and not d) or w.mean(n) == pytest.approx(sum(d) / max(1, len(d)))


def test_sliding_window_memory_is_bounded_and_old_values_are_overwritten() -> None:
    w = SlidingWindow(100)
    for k in range(1000):
        w.extend("s", np.arange(k * 37, (k + 1) * 37))
    assert w._buf["s"].shape == (100,)  # the ring buffer never grows
    assert w.values("s").tolist() == list(range(37_000 - 100, 37_000))
    w.extend("s", np.arange(10_000))
    assert w.values("s").tolist() == list(range(9_900, 10_000)) and w.count("s") == 100
    values = w.values("s")
    values[:] = 0  # a copy
    assert w.mean("s") == pytest.approx(9_949.5)
    with pytest.raises(ValueError):
        SlidingWindow(0)


# ---- Prequential -------------------------------------------------------------------------------------------

def test_prequential_calibrates_before_it_learns() -> None:
    ev, shadow = Prequential(window=10_000), PlattScaler()
    for s, y in logistic_batches(2.5, -1.0, 6):
        want = shadow.predict(s)
        assert ev.add_impressions(s, y).tolist() == want.tolist()
        shadow.update(s, y)
    assert (ev.scaler.a, ev.scaler.b) == (shadow.a, shadow.b)
    first = logistic_batches(2.5, -1.0, 1)[0][0]
    assert ev.window.values("p")[:500] == pytest.approx(1 / (1 + np.exp(-first)), rel=1e-12)  # a=1, b=0


def test_prequential_snapshot_equals_independent_computations() -> None:
    ev = Prequential(window=300, ks=(1, 5))
    rng = np.random.default_rng(5)
    ranks = rng.integers(1, 12, size=1000)
    ev.add_ranking(ranks[:600], n_items=10)
    ev.add_ranking(ranks[600:], n_items=10)
    batches = logistic_batches(2.0, 0.0, 3, size=150)
    ps = [ev.add_impressions(s, y) for s, y in batches]
    held = ranks[-300:].tolist()
    s_all = np.concatenate([s for s, _ in batches])[-300:]
    y_all = np.concatenate([y for _, y in batches])[-300:]
    snap = ev.snapshot()
    assert snap["recall@1"] == pytest.approx(sum(r <= 1 for r in held) / 300)
    assert snap["recall@5"] == pytest.approx(sum(r <= 5 for r in held) / 300)
    assert snap["mrr"] == pytest.approx(sum(1 / r for r in held if r <= 10) / 300)
    assert snap["auc"] == pytest.approx(brute_auc(s_all.tolist(), y_all.tolist()))
    assert snap["logloss"] == pytest.approx(brute_logloss(np.concatenate(ps)[-300:].tolist(), y_all.tolist()))
    assert (snap["positives"], snap["impressions"]) == (300, 300)
    json.dumps(snap, allow_nan=False)


def test_prequential_snapshot_is_none_where_undefined() -> None:
    ev = Prequential(window=50)
    assert ev.snapshot() == {"recall@10": None, "recall@50": None, "mrr": None, "auc": None, "logloss": None,
                             "positives": 0, "impressions": 0}
    ev.add_impressions(np.array([0.3, 0.9]), np.array([0, 0]))  # one class: no AUC, but a logloss
    snap = ev.snapshot()
    assert snap["auc"] is None and snap["logloss"] is not None and snap["impressions"] == 2
    json.dumps(snap, allow_nan=False)
    with pytest.raises(ValueError):
        ev.add_ranking(np.array([0]))
    with pytest.raises(ValueError):
        ev.add_impressions(np.array([0.1]), np.array([1, 0]))


# ---- MetricsLog --------------------------------------------------------------------------------------------

def test_metrics_log_appends_one_flushed_line_per_record(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "metrics.jsonl"
    log = MetricsLog(path)
    log.write({"step": np.int64(1), "auc": np.float64(0.75), "v": np.array([1.0, np.nan])})
    assert MetricsLog.read(path) == [{"step": 1, "auc": 0.75, "v": [1.0, None]}]  # flushed while open
    log.write({"step": 2, "auc": math.nan, "logloss": math.inf})
    log.close()
    with MetricsLog(path) as again:  # appends, never truncates
        again.write({"step": 3})
    assert [json.loads(line) for line in path.read_text().splitlines()] == MetricsLog.read(path) == [
        {"step": 1, "auc": 0.75, "v": [1.0, None]}, {"step": 2, "auc": None, "logloss": None}, {"step": 3}]
    with path.open("ab") as f:
        f.write(b'{"step": 4, "au')  # a torn write
    assert len(MetricsLog.read(path)) == 3
    with pytest.raises(TypeError), MetricsLog(path) as bad:
        bad.write({"x": object()})


# ---- bootstrap ---------------------------------------------------------------------------------------------

def paired_hits(m: int, pa: float, pb: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample hits of two correlated models: b's hits are a's plus some more (P(b) = pb)."""
    rng = np.random.default_rng(seed)
    u = rng.random(m)
    return (u < pa).astype(float), (u < pb).astype(float)


def test_bootstrap_interval_contains_the_true_difference() -> None:
    a, b = paired_hits(4000, 0.30, 0.35, seed=11)
    diff, lo, hi = paired_bootstrap(a, b, n=1000, seed=0)
    assert diff == pytest.approx(b.mean() - a.mean())
    assert lo < 0.05 < hi and lo < diff < hi and hi - lo < 0.03
    rel, rlo, rhi = paired_bootstrap(a, b, n=1000, seed=0, relative=True)
    assert rel == pytest.approx((b.mean() - a.mean()) / a.mean())
    assert rlo < 0.05 / 0.30 < rhi


def test_bootstrap_covers_the_true_difference_about_95_percent_of_the_time() -> None:
    covered = 0
    for rep in range(60):
        a, b = paired_hits(400, 0.30, 0.35, seed=rep)
        _, lo, hi = paired_bootstrap(a, b, n=300, seed=rep)
        covered += lo <= 0.05 <= hi
    assert 50 <= covered <= 60


def test_bootstrap_resamples_pairs_jointly_and_is_deterministic_for_a_seed() -> None:
    rng = np.random.default_rng(2)
    a = rng.normal(size=500)
    assert paired_bootstrap(a, a + 1.0, n=200) == pytest.approx((1.0, 1.0, 1.0))  # paired: no spread at all
    b = a + rng.normal(size=500)
    assert paired_bootstrap(a, b, seed=4) == paired_bootstrap(a, b, seed=4)
    assert paired_bootstrap(a, b, seed=4)[1:] != paired_bootstrap(a, b, seed=5)[1:]
    diff, lo, hi = paired_bootstrap(a, b, statistic=np.median, n=300)
    assert diff == pytest.approx(np.median(b) - np.median(a)) and lo <= hi
    with pytest.raises(ValueError):
        paired_bootstrap(a, b[:-1])
    with pytest.raises(ValueError):
        paired_bootstrap(a[:0], b[:0])


def test_bootstrap_auc_interval_contains_the_true_difference() -> None:
    rng = np.random.default_rng(9)
    y = rng.random(3000) < 0.3
    noise = rng.normal(size=(2, 3000))
    sa, sb = 0.5 * y + noise[0], 1.0 * y + noise[1]  # AUC = Phi(delta / sqrt(2))
    true = 0.5 * (math.erf(1.0 / 2) - math.erf(0.5 / 2))
    diff, lo, hi = paired_bootstrap_auc(sa, sb, y, n=500, seed=1)
    assert diff == pytest.approx(auc(sb, y) - auc(sa, y))
    assert lo < true < hi and lo < diff < hi
    assert paired_bootstrap_auc(sa, sb, y, n=100, seed=3) == paired_bootstrap_auc(sa, sb, y, n=100, seed=3)
    d, lo, hi = paired_bootstrap_auc(sa, sa, y, n=100)
    assert d == lo == hi == 0.0


def test_bootstrap_auc_skips_resamples_with_one_class() -> None:
    y = np.zeros(40, dtype=int)
    y[0] = 1  # most resamples miss the only positive
    s = np.linspace(0, 1, 40)
    d, lo, hi = paired_bootstrap_auc(s, -s, y, n=200)
    assert (d, lo, hi) == (1.0, 1.0, 1.0)
    d, lo, hi = paired_bootstrap_auc(s, -s, np.zeros(40, dtype=int), n=20)
    assert math.isnan(d) and math.isnan(lo) and math.isnan(hi)
