"""Table and property tests of the pure last-N model (filters/sequences.py)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from filters.sequences import (
    Entry,
    decode_member,
    encode_member,
    last_n,
    merge,
    order_key,
    sequence_capacities,
)
from infra.settings import LastNSettings


def E(eid: str, ts: int, item: str = "i", cat: str | None = None) -> Entry:
    return Entry(item, ts, cat, None, eid)


def ids(entries: list[Entry]) -> list[str]:
    return [e.event_id for e in entries]


MERGE_TABLE = [
    # (existing, batch, capacity, expected ids oldest first, appended, late)
    ([], [], 3, [], 0, 0),
    ([], [E("a", 1), E("b", 2), E("c", 3)], 3, ["a", "b", "c"], 3, 0),
    ([], [E("c", 3), E("b", 2), E("a", 1)], 3, ["a", "b", "c"], 3, 2),
    ([], [E("a", 1), E("b", 2), E("c", 3), E("d", 4)], 2, ["c", "d"], 4, 0),
    ([E("b", 5)], [E("a", 5)], 5, ["a", "b"], 1, 0),  # tie on ts -> event_id order
    ([E("ab", 5)], [E("a", 5), E("abc", 5)], 5, ["a", "ab", "abc"], 2, 0),  # prefixes
    ([E("a", 1)], [E("a", 9)], 5, ["a"], 0, 0),  # duplicate of an existing entry
    ([], [E("a", 1, "x"), E("a", 1, "y")], 5, ["a"], 1, 0),  # first delivery wins
    ([E("x", 10), E("y", 20)], [E("z", 1)], 2, ["x", "y"], 1, 1),  # too old: trimmed at once
    ([E("x", 10), E("y", 20)], [E("z", 15)], 2, ["z", "y"], 1, 1),  # late insert at its place
    ([E("x", 10)], [E("y", 20)], 1, ["y"], 1, 0),
    ([E("x", 10)], [], 0, [], 0, 0),
]


@pytest.mark.parametrize(("existing", "batch", "cap", "expected", "appended", "late"), MERGE_TABLE)
def test_merge_table(
    existing: list[Entry], batch: list[Entry], cap: int, expected: list[str], appended: int, late: int
) -> None:
    result = merge(existing, batch, cap)
    assert ids(result.entries) == expected
    assert (result.appended, result.late_inserted) == (appended, late)


def test_first_delivery_payload_wins() -> None:
    result = merge([], [E("a", 1, cat="x"), E("a", 1, cat="y")], 5)
    assert result.entries[0].category == "x"


LAST_N_TABLE = [
    (5, None, None, ["d", "c", "b", "a"]),
    (2, None, None, ["d", "c"]),
    (0, None, None, []),
    (5, "x", None, ["c", "a"]),
    (1, "x", None, ["c"]),
    (5, "nope", None, []),
    (5, None, 3, ["b", "a"]),  # before is exclusive
    (5, "x", 3, ["a"]),
    (5, None, 0, []),
]


@pytest.mark.parametrize(("n", "category", "before", "expected"), LAST_N_TABLE)
def test_last_n_table(n: int, category: str | None, before: int | None, expected: list[str]) -> None:
    seq = [E("a", 1, cat="x"), E("b", 2, cat="y"), E("c", 3, cat="x"), E("d", 4)]
    assert ids(last_n(seq, n, category, before)) == expected


def test_capacities() -> None:
    assert sequence_capacities(LastNSettings()) == {
        "click": 200, "like": 100, "collect": 100, "share": 50, "comment": 50
    }
    assert "impression" in sequence_capacities(LastNSettings(impressions=10))


ident = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), min_codepoint=0x20).filter(
        lambda c: c != "\x7f"
    ),
    min_size=1,
    max_size=12,
)


@given(ident, ident, st.none() | ident, st.none() | ident, st.integers(0, 10**13 - 1))
def test_member_round_trip(eid: str, item: str, cat: str | None, author: str | None, ts: int) -> None:
    assert decode_member(encode_member(eid, item, cat, author).encode(), ts) == Entry(item, ts, cat, author, eid)


@given(st.lists(st.tuples(st.integers(0, 3), ident, ident), min_size=1, max_size=30,
                unique_by=lambda t: t[1]))
def test_redis_member_order_is_reference_order(rows: list[tuple[int, str, str]]) -> None:
    """Sorting by (score, member bytes) - what a sorted set does - equals sorting by order_key."""
    entries = [Entry(item, ts, None, None, eid) for ts, eid, item in rows]
    by_redis = sorted(entries, key=lambda e: (e.ts, encode_member(e.event_id, e.item_id, None, None)))
    assert by_redis == sorted(entries, key=order_key)


@settings(max_examples=200)
@given(st.integers(0, 2**32), st.integers(1, 12))
def test_incremental_merge_equals_merge_of_everything(seed: int, cap: int) -> None:
    """Trimming after every batch keeps exactly the newest `cap` of all events ever merged."""
    rng = random.Random(seed)
    pool = [E(f"e{k}", rng.randrange(30)) for k in range(40)]  # a redelivery keeps its ts
    events = [rng.choice(pool) for _ in range(rng.randrange(60))]
    seq: list[Entry] = []
    pos = 0
    while pos < len(events):
        step = rng.randrange(1, 8)
        seq = merge(seq, events[pos : pos + step], cap).entries
        pos += step
    whole = merge([], events, cap).entries
    # a duplicate whose first copy was trimmed comes back at the same (ts, event_id) place: trimmed again
    assert seq == whole
