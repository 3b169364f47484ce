"""The id -> row table of an embedding (online_learning.vocab): the rules case by case, and against a
brute-force reference model over random streams (with checkpoint round trips in between)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from online_learning.vocab import IdTable, IdTableStats

Script = list[tuple[list[str], int]]


def run(table: IdTable, script: Script) -> list[list[int]]:
    return [table.observe(ids, ts) for ids, ts in script]


# (config, [(ids, ts)], rows returned by each observe)
OBSERVE_CASES = [
    pytest.param({"capacity": 3, "min_count": 2, "idle_ms": 100}, [(["a"], 0), (["a"], 1), (["a"], 2)],
                 [[0], [1], [1]], id="admitted-at-min-count"),
    pytest.param({"capacity": 3, "min_count": 1, "idle_ms": 100}, [(["a", "b", "a"], 0)],
                 [[1, 2, 1]], id="min-count-1-admits-at-once"),
    pytest.param({"capacity": 3, "min_count": 3, "idle_ms": 100}, [(["a", "b", "a", "b", "a", "b"], 0)],
                 [[0, 0, 0, 0, 1, 2]], id="default-row-until-admitted"),
    pytest.param({"capacity": 1, "min_count": 1, "idle_ms": 10}, [(["a"], 0), (["b"], 5), (["b"], 9), (["b"], 10)],
                 [[1], [0], [0], [1]], id="full-waits-until-lru-idle"),
    pytest.param({"capacity": 1, "min_count": 1, "idle_ms": 10}, [(["a"], 0), (["a"], 8), (["b"], 10), (["b"], 18)],
                 [[1], [1], [0], [1]], id="hit-refreshes-last-seen"),
    pytest.param({"capacity": 1, "min_count": 1, "idle_ms": 10}, [(["a"], 8), (["a"], 0), (["b"], 17), (["b"], 18)],
                 [[1], [1], [0], [1]], id="older-hit-keeps-newest-last-seen"),
    pytest.param({"capacity": 2, "min_count": 1, "idle_ms": 10}, [(["a", "b"], 0), (["b"], 5), (["c"], 10)],
                 [[1, 2], [2], [1]], id="evicts-lru-and-reuses-its-row"),
    pytest.param({"capacity": 2, "min_count": 1, "idle_ms": 10}, [(["a"], 5), (["b"], 0), (["c"], 12), (["c"], 15)],
                 [[1], [2], [0], [1]], id="eviction-follows-touch-order"),
    pytest.param({"capacity": 1, "min_count": 2, "idle_ms": 10}, [(["a", "a"], 0), (["b", "b"], 3), (["b"], 10)],
                 [[0, 1], [0, 0], [1]], id="full-keeps-the-count"),
    pytest.param({"capacity": 1, "min_count": 1, "idle_ms": 1}, [(["a", "b", "a"], 0)],
                 [[1, 0, 1]], id="no-eviction-within-one-call"),
]


@pytest.mark.parametrize(("config", "script", "expected"), OBSERVE_CASES)
def test_observe(config: dict[str, int], script: Script, expected: list[list[int]]) -> None:
    table = IdTable(**config)
    assert run(table, script) == expected
    stats = table.stats
    assert stats.hits + stats.admissions + stats.misses == sum(len(ids) for ids, _ in script)
    assert stats.rows == len(table) <= table.capacity and table.size == table.capacity + 1


@pytest.mark.parametrize(("min_count", "expected_full"), [(1, 3), (2, 2), (3, 1), (4, 0)])
def test_full_is_counted(min_count: int, expected_full: int) -> None:
    table = IdTable(capacity=1, min_count=min_count, idle_ms=100)
    run(table, [(["a"] * min_count, 0), (["b"], 1), (["b"], 2), (["b"], 3)])
    assert table.stats.full == expected_full
    assert table.stats.misses == min_count - 1 + 3
    assert table.take_evicted() == [] and table.rows(["a", "b"]) == [1, 0]


def test_idle_eviction_is_recorded() -> None:
    table = IdTable(capacity=1, min_count=1, idle_ms=10)
    assert run(table, [(["a"], 0), (["b"], 10)]) == [[1], [1]]
    assert table.take_evicted() == [("a", 1)] and table.take_evicted() == []
    assert table.take_admitted() == [("a", 1), ("b", 1)] and table.take_admitted() == []
    assert table.take_touched() == {"b": 1}
    assert "a" not in table and "b" in table and table.id_of(1) == "b" and table.id_of(0) is None
    assert asdict(table.stats) == asdict(IdTableStats(rows=1, admissions=2, evictions=1))


# (watermark, rows evicted, ids left, row of the pending "p" on its second occurrence: 0 = its count was dropped)
EXPIRE_CASES = [(9, 0, {"a", "b", "c"}, 4), (10, 1, {"b", "c"}, 1), (12, 1, {"b", "c"}, 1), (13, 1, {"b", "c"}, 0),
                (15, 2, {"c"}, 0), (19, 3, set(), 0), (10**9, 3, set(), 0)]


@pytest.mark.parametrize(("watermark", "evicted", "left", "p_row"), EXPIRE_CASES)
def test_expire(watermark: int, evicted: int, left: set[str], p_row: int) -> None:
    table = IdTable(capacity=4, min_count=2, idle_ms=10)
    run(table, [(["a", "a"], 0), (["p"], 3), (["b", "b"], 5), (["c", "c"], 9)])
    assert table.expire(watermark) == evicted
    assert {key for key, _ in table.items()} == left and len(table) == len(left)
    assert table.take_evicted() == [("a", 1), ("b", 2), ("c", 3)][:evicted]
    assert table.stats.dropped == (0 if p_row else 1) and table.stats.pending == (1 if p_row else 0)
    assert table.observe(["p"], watermark) == [p_row]


def test_expire_frees_lowest_rows_first() -> None:
    table = IdTable(capacity=3, min_count=1, idle_ms=10)
    run(table, [(["a"], 0), (["b"], 5), (["c"], 1)])
    assert table.expire(14) == 1  # a; c is idle too but was touched after b, which is not: it waits
    assert table.expire(15) == 2
    assert table.observe(["x", "y", "z"], 16) == [1, 2, 3]
    assert table.take_evicted() == [("a", 1), ("b", 2), ("c", 3)]


# (pending_cap, distinct ids seen once before "p0" comes back, "p0" admitted on its second occurrence)
PENDING_CASES = [(3, 3, True), (3, 4, False), (0, 1, False), (1, 1, True), (None, 12, True), (None, 13, False)]


@pytest.mark.parametrize(("pending_cap", "n", "admitted"), PENDING_CASES)
def test_pending_cap(pending_cap: int | None, n: int, admitted: bool) -> None:
    table = IdTable(capacity=3, min_count=2, idle_ms=10, pending_cap=pending_cap)
    table.observe([f"p{k}" for k in range(n)], 0)
    assert table.stats.pending == min(n, table.pending_cap) and table.stats.dropped == max(0, n - table.pending_cap)
    assert table.observe(["p0"], 1) == ([1] if admitted else [0])


def test_pending_order_is_refreshed_by_occurrences() -> None:
    table = IdTable(capacity=3, min_count=3, idle_ms=10, pending_cap=2)
    assert table.pending_cap == 2 and IdTable(capacity=3, min_count=3, idle_ms=10).pending_cap == 12
    assert table.observe(["p0", "p1", "p0", "p2", "p0", "p1"], 0) == [0, 0, 0, 0, 1, 0]  # p1 dropped, not p0


def test_take_touched() -> None:
    table = IdTable(capacity=2, min_count=1, idle_ms=10)
    table.observe(["a", "b"], 0)
    assert table.take_touched() == {"a": 1, "b": 2} and table.take_touched() == {}
    table.observe(["a"], 3)
    assert table.expire(10) == 1  # b
    assert table.take_touched() == {"a": 1}
    table.observe(["b", "a"], 5)
    assert table.expire(20) == 2
    assert table.take_touched() == {} and table.take_evicted() == [("b", 2), ("b", 2), ("a", 1)]


@pytest.mark.parametrize("min_count", [1, 2])
def test_rows_is_read_only(min_count: int) -> None:
    table = IdTable(capacity=2, min_count=min_count, idle_ms=10)
    before = asdict(table.stats)
    assert table.rows(["a"] * 5) == [0] * 5
    assert asdict(table.stats) == before and table.take_touched() == {} and table.snapshot()["pending"] == []
    assert table.observe(["a"], 0) == [1 if min_count == 1 else 0]
    table.observe(["a"] * (min_count - 1), 0)
    table.take_touched()
    assert table.rows(["a", "zz"]) == [1, 0] and table.take_touched() == {}
    assert table.expire(10) == 1  # rows() did not refresh last-seen


@pytest.mark.parametrize("config", [
    {"capacity": 0, "min_count": 1, "idle_ms": 1}, {"capacity": 1, "min_count": 0, "idle_ms": 1},
    {"capacity": 1, "min_count": 1, "idle_ms": 0}, {"capacity": 1, "min_count": 1, "idle_ms": 1, "pending_cap": -1},
])
def test_bad_config(config: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="IdTable"):
        IdTable(**config)


def _json(s: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(s))  # type: ignore[no-any-return]


def _msgpack(s: dict[str, Any]) -> dict[str, Any]:
    return msgspec.msgpack.decode(msgspec.msgpack.encode(s))  # type: ignore[no-any-return]


BUSY = [(["a", "a", "b", "c", "c", "d"], 0), (["b", "e", "e", "f"], 4), (["g", "g", "a"], 12), (["h"], 13)]
AFTER = [(["b", "g", "h", "h", "x", "x"], 15), (["a", "c", "y", "y", "z", "z"], 30), (["q"] * 3, 31)]


@pytest.mark.parametrize("trip", [lambda s: s, _json, _msgpack], ids=["plain", "json", "msgpack"])
def test_snapshot_restore_round_trip(trip: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    table = IdTable(capacity=3, min_count=2, idle_ms=10, pending_cap=3)
    run(table, BUSY)
    table.take_admitted()
    copy = IdTable.restore(trip(table.snapshot()))
    assert copy.snapshot() == table.snapshot()
    for ids, ts in AFTER:
        assert copy.observe(ids, ts) == table.observe(ids, ts)
        assert copy.rows(["a", "b", "x", "q"]) == table.rows(["a", "b", "x", "q"])
        assert copy.expire(ts - 5) == table.expire(ts - 5)
    for take in ("take_admitted", "take_evicted", "take_touched"):
        assert getattr(copy, take)() == getattr(table, take)()
    assert copy.stats == table.stats and copy.snapshot() == table.snapshot()


@pytest.mark.parametrize(("field", "value"), [
    ("version", 99), ("next_row", 9), ("free", []), ("rows", [["a", 1, 0], ["b", 1, 0]]),
    ("pending", [["a", 1, 0]]), ("pending", [["p", 1, 0]] * 2), ("pending", [[f"p{k}", 1, 0] for k in range(4)]),
])
def test_restore_rejects_inconsistent_snapshots(field: str, value: object) -> None:
    table = IdTable(capacity=3, min_count=2, idle_ms=10, pending_cap=3)
    run(table, [(["a", "a", "b", "b", "c", "c"], 0)])
    table.expire(10)
    table.observe(["a", "a"], 11)  # a back on the lowest free row 1, rows 2 and 3 free
    snap = table.snapshot()
    assert IdTable.restore(snap).snapshot() == snap
    with pytest.raises(ValueError, match="IdTable"):
        IdTable.restore({**snap, field: value})


class Reference:
    """The rules, brute force: entries carry a touch sequence number; 'least recently touched' is the
    minimum of it, free rows are whatever no own row holds, the lowest one taken first."""

    def __init__(self, capacity: int, min_count: int, idle_ms: int, pending_cap: int) -> None:
        self.capacity, self.min_count, self.idle_ms, self.pending_cap = capacity, min_count, idle_ms, pending_cap
        self.own: dict[str, dict[str, int]] = {}  # id -> row, last, seq
        self.pend: dict[str, dict[str, int]] = {}  # id -> count, last, seq
        self.seq = 0
        self.admitted: list[tuple[str, int]] = []
        self.evicted: list[tuple[str, int]] = []
        self.touched: dict[str, int] = {}
        self.stats = dict.fromkeys(("admissions", "evictions", "hits", "misses", "full", "dropped"), 0)

    def tick(self) -> int:
        self.seq += 1
        return self.seq

    def oldest(self, entries: dict[str, dict[str, int]]) -> str:
        return min(entries, key=lambda k: entries[k]["seq"])

    def evict(self, key: str) -> None:
        entry = self.own.pop(key)
        self.evicted.append((key, entry["row"]))
        self.touched.pop(key, None)
        self.stats["evictions"] += 1

    def free_rows(self) -> list[int]:
        return sorted(set(range(1, self.capacity + 1)) - {e["row"] for e in self.own.values()})

    def one(self, key: str, ts: int) -> int:
        if key in self.own:
            e = self.own[key]
            e["last"], e["seq"] = max(e["last"], ts), self.tick()
            self.touched[key] = e["row"]
            self.stats["hits"] += 1
            return e["row"]
        p = self.pend.setdefault(key, {"count": 0, "last": ts})
        p["count"], p["last"], p["seq"] = p["count"] + 1, max(p["last"], ts), self.tick()
        if p["count"] >= self.min_count:
            if not self.free_rows():
                lru = self.oldest(self.own)
                if self.own[lru]["last"] + self.idle_ms <= ts:
                    self.evict(lru)
            if self.free_rows():
                row = self.free_rows()[0]
                del self.pend[key]
                self.own[key] = {"row": row, "last": p["last"], "seq": self.tick()}
                self.admitted.append((key, row))
                self.touched[key] = row
                self.stats["admissions"] += 1
                return row
            self.stats["full"] += 1
        self.stats["misses"] += 1
        if len(self.pend) > self.pending_cap:
            del self.pend[self.oldest(self.pend)]
            self.stats["dropped"] += 1
        return 0

    def expire(self, watermark: int) -> int:
        n = 0
        while self.own and self.own[lru := self.oldest(self.own)]["last"] + self.idle_ms <= watermark:
            self.evict(lru)
            n += 1
        while self.pend and self.pend[old := self.oldest(self.pend)]["last"] + self.idle_ms <= watermark:
            del self.pend[old]
            self.stats["dropped"] += 1
        return n


IDS = st.sampled_from(["a", "b", "c", "d", "e", "f", "g"])
OPS = st.one_of(
    st.tuples(st.just("observe"), st.lists(IDS, max_size=6), st.integers(-6, 6)),
    st.tuples(st.just("expire"), st.integers(0, 12)),
    st.tuples(st.just("rows"), st.lists(IDS, max_size=6)),
    st.tuples(st.just("take")),
    st.tuples(st.just("restore")),
)


@settings(max_examples=500, deadline=None)
@given(capacity=st.integers(1, 3), min_count=st.integers(1, 3), idle_ms=st.integers(1, 12),
       pending_cap=st.integers(0, 4), ops=st.lists(OPS, max_size=40))
def test_against_reference(capacity: int, min_count: int, idle_ms: int, pending_cap: int,
                           ops: list[tuple[Any, ...]]) -> None:
    table = IdTable(capacity, min_count, idle_ms, pending_cap)
    ref = Reference(capacity, min_count, idle_ms, pending_cap)
    ts = top = 100
    for op in ops:
        if op[0] == "observe":
            ts = max(0, ts + op[2])
            top = max(top, ts)
            assert table.observe(op[1], ts) == [ref.one(key, ts) for key in op[1]]
        elif op[0] == "expire":
            assert table.expire(top - op[1]) == ref.expire(top - op[1])
        elif op[0] == "rows":
            assert table.rows(op[1]) == [ref.own[k]["row"] if k in ref.own else 0 for k in op[1]]
        elif op[0] == "take":
            assert table.take_admitted() == ref.admitted and table.take_evicted() == ref.evicted
            assert table.take_touched() == ref.touched
            ref.admitted, ref.evicted, ref.touched = [], [], {}
        else:
            table = IdTable.restore(_msgpack(table.snapshot()))
        stats = asdict(table.stats)
        assert stats == {**ref.stats, "rows": len(ref.own), "pending": len(ref.pend)}
        assert len(table) == len(ref.own)
        assert {r: table.id_of(r) for r in range(capacity + 2)} == {
            r: next((k for k, e in ref.own.items() if e["row"] == r), None) for r in range(capacity + 2)}
        assert sorted(table.items()) == sorted((k, e["row"]) for k, e in ref.own.items())
