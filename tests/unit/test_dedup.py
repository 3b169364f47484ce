"""The trainer's sample dedup against a brute-force reference: a sample is fresh unless the same id was
accepted earlier with a ts within the horizon (bucket granularity: the reference keeps whole buckets)."""

from __future__ import annotations

import random

import pytest

from online_learning.dedup import BUCKETS, SampleDedup


def _reference(stream: list[tuple[str, int]], horizon: int) -> list[bool]:
    width = max(1, horizon // BUCKETS)
    accepted: list[tuple[str, int]] = []  # (id, bucket)
    newest, out = -1, []
    for sid, ts in stream:
        oldest = (max(newest, ts) - horizon) // width
        live = [(s, b) for s, b in accepted if b >= (newest - horizon) // width]
        fresh = all(s != sid for s, _ in live)
        out.append(fresh)
        if fresh:
            accepted.append((sid, ts // width))
            if ts > newest:
                newest = ts
                accepted = [(s, b) for s, b in accepted if b >= oldest]
    return out


@pytest.mark.parametrize("seed", range(8))
def test_matches_reference(seed: int) -> None:
    rng = random.Random(seed)
    horizon = rng.choice([600, 6_000, 60_000])
    stream, ts = [], 0
    for _ in range(400):
        ts += rng.randrange(0, 400)
        sid = f"s1-{rng.randrange(60)}"
        stream.append((sid, max(0, ts - rng.randrange(0, 300))))  # mild disorder
    d = SampleDedup(horizon)
    assert [d.fresh(s, t) for s, t in stream] == _reference(stream, horizon)


@pytest.mark.parametrize(("ids", "expected"), [
    (["a", "a"], [True, False]),
    (["a", "b", "a", "b"], [True, True, False, False]),
    ([], []),
])
def test_duplicates_within_horizon(ids: list[str], expected: list[bool]) -> None:
    d = SampleDedup(60_000)
    assert [d.fresh(s, 1_000) for s in ids] == expected


def test_forgets_beyond_horizon() -> None:
    d = SampleDedup(6_000)
    assert d.fresh("a", 0)
    assert d.fresh("z", 20_000)  # moves the newest ts far ahead: bucket 0 is dropped
    assert d.fresh("a", 20_001)
    assert len(d) == 2


def test_persisted_ids_reload_exactly() -> None:
    d = SampleDedup(60_000)
    for k in range(100):
        d.fresh(f"s{k}", k * 100)
    persisted = {b: [blob] for b, blob in d.take_new().items()}
    assert d.take_new() == {}
    restarted = SampleDedup(60_000)
    restarted.load(persisted)
    assert [restarted.fresh(f"s{k}", 10_000) for k in range(100, 95, -1)] == [True, False, False, False, False]
    assert len(restarted) == 101
