"""The id -> row map of one embedding table over an open ID space (users, items, categories), pure.

An :class:`IdTable` of ``capacity`` rows gives row ``1..capacity`` to frequent, recently seen ids and
row ``0``, the shared default row, to every other id ("new items share one ID"); the embedding matrix
has ``size == capacity + 1`` rows. The rules:

- :meth:`IdTable.observe` (training) counts one occurrence per id. An id with an own row is a *hit*: its
  last-seen event time becomes ``max(last_seen, ts)`` and its row is returned. Any other id is *pending*
  and gets row 0 until its count reaches ``min_count``; then it is *admitted* to the lowest free row
  (rows of evicted ids are reused). With no free row, the least recently touched own row is evicted if
  it is idle (``last_seen + idle_ms <= ts``) and its row reused; else the id stays on row 0 (a *full*
  miss) and tries again on its next occurrence. Rows returned ≠ 0 are *touched* (to publish).
- :meth:`IdTable.rows` (evaluation, histories) only looks up: no count, no admission, no touch.
- :meth:`IdTable.expire` evicts own rows idle at the watermark and forgets pending ids idle as long.
- at most ``pending_cap`` ids are pending: beyond it the least recently seen one is dropped, so under
  pressure a rare id can lose its count and start again from zero.

Order versus time: own rows and pending ids are kept in the *arrival order of their touches* (an
``OrderedDict`` moved to the end on each touch), and eviction walks that order from the front, stopping
at the first entry that is not idle; the idle test itself uses event time. Event time is nearly ordered,
so this is close to exact LRU by event time and costs O(1) per touch and O(evicted) per expiry; an idle
entry queued behind one that is not idle yet (touched earlier but with a newer ``ts``) waits for it.
Because ``idle_ms >= 1``, a row touched by an :meth:`IdTable.observe` call is never evicted within that
call (``ts`` is the same for the whole call).

Everything is deterministic (event time only: no wall clock, no ``hash()``, no randomness), so a replay
rebuilds the same table; :meth:`IdTable.snapshot` / :meth:`IdTable.restore` carry it in a checkpoint.

>>> t = IdTable(capacity=2, min_count=2, idle_ms=100)
>>> t.observe(["a", "b", "a"], ts=10)  # "a" reaches min_count on its second occurrence
[0, 0, 1]
>>> t.observe(["a", "b", "c", "c"], ts=20), t.take_admitted()
([1, 2, 0, 0], [('a', 1), ('b', 2)])
>>> t.stats.full, t.rows(["a", "c", "zzz"])  # table full, nothing idle: "c" stays on the shared row
(1, [1, 0, 0])
>>> t.observe(["c"], ts=120), t.take_evicted()  # "a" idle since 20: its row goes to "c"
([1], [('a', 1)])
"""

from __future__ import annotations

import dataclasses
import heapq
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any

__all__ = ["SNAPSHOT_VERSION", "IdTable", "IdTableStats"]

SNAPSHOT_VERSION = 1


@dataclass
class IdTableStats:
    """Counters for the metrics (the caller exports them). Each observed occurrence is exactly one of a
    hit, an admission or a miss (row 0); ``full`` counts the misses of ids that had reached ``min_count``
    but found no free or idle row. ``rows`` and ``pending`` are gauges; ``dropped`` counts pending ids
    forgotten (by ``pending_cap`` or by :meth:`IdTable.expire`)."""

    rows: int = 0
    admissions: int = 0
    evictions: int = 0
    hits: int = 0
    misses: int = 0
    full: int = 0
    pending: int = 0
    dropped: int = 0


def _check(ok: bool, what: str) -> None:
    if not ok:
        msg = f"IdTable: {what}"
        raise ValueError(msg)


class IdTable:
    """Row ``1..capacity`` for admitted ids, row 0 shared by the rest (rules in the module docstring).

    >>> t = IdTable(capacity=1, min_count=1, idle_ms=5)
    >>> t.size, t.observe(["x"], ts=0), len(t), "x" in t, t.id_of(1), t.id_of(0)
    (2, [1], 1, True, 'x', None)
    """

    def __init__(self, capacity: int, min_count: int, idle_ms: int, pending_cap: int | None = None) -> None:
        _check(capacity >= 1, "capacity must be >= 1")
        _check(min_count >= 1, "min_count must be >= 1")
        _check(idle_ms >= 1, "idle_ms must be >= 1")
        self.capacity = capacity
        self.min_count = min_count
        self.idle_ms = idle_ms
        self.pending_cap = 4 * capacity if pending_cap is None else pending_cap
        _check(self.pending_cap >= 0, "pending_cap must be >= 0")
        self._row: dict[str, int] = {}  # own rows: id -> row (the fast path of rows())
        self._seen: OrderedDict[str, int] = OrderedDict()  # own rows: id -> last_seen, in touch order
        self._ids: list[str | None] = [None] * (capacity + 1)  # row -> id
        self._pending: OrderedDict[str, list[int]] = OrderedDict()  # id -> [count, last_seen], in touch order
        self._free: list[int] = []  # heap of freed rows, all below _next
        self._next = 1  # lowest row never used yet
        self._touched: dict[str, int] = {}
        self._admitted: list[tuple[str, int]] = []
        self._evicted: list[tuple[str, int]] = []
        self._stats = IdTableStats()

    @property
    def size(self) -> int:
        """Rows of the embedding matrix: ``capacity`` own rows plus the shared row 0."""
        return self.capacity + 1

    @property
    def stats(self) -> IdTableStats:
        """The counters, gauges up to date (the same object each time: read, don't keep a copy stale)."""
        self._stats.rows = len(self._row)
        self._stats.pending = len(self._pending)
        return self._stats

    def __len__(self) -> int:
        return len(self._row)

    def __contains__(self, key: object) -> bool:
        return key in self._row

    def id_of(self, row: int) -> str | None:
        """The id holding ``row`` (``None`` for row 0, a free row or a row out of range)."""
        return self._ids[row] if 0 < row <= self.capacity else None

    def items(self) -> Iterator[tuple[str, int]]:
        """Every ``(id, row)`` with an own row, least recently touched first (e.g. for a full publish)."""
        row = self._row
        return ((key, row[key]) for key in self._seen)

    def rows(self, ids: Iterable[str]) -> list[int]:
        """Rows of ``ids``, read only (unknown or pending ids -> 0): for evaluation and history items.

        >>> t = IdTable(capacity=4, min_count=1, idle_ms=10)
        >>> _ = t.observe(["a"], ts=0)
        >>> t.rows(["a", "b", "a"]), "b" in t, t.stats.misses
        ([1, 0, 1], False, 0)
        """
        return list(map(self._row.get, ids, repeat(0)))

    def observe(self, ids: Sequence[str], ts: int) -> list[int]:
        """Count one occurrence of each id at event time ``ts`` (training) and return its row, admitting
        ids that reach ``min_count`` (row 0 until then, or while the table is full and nothing is idle).

        >>> t = IdTable(capacity=2, min_count=3, idle_ms=50)
        >>> t.observe(["u", "u", "u", "u"], ts=7), t.take_touched()
        ([0, 0, 1, 1], {'u': 1})
        """
        row, seen, touched = self._row, self._seen, self._touched
        out: list[int] = []
        append = out.append
        hits = 0
        for key in ids:
            r = row.get(key)
            if r is None:
                append(self._miss(key, ts))
                continue
            if seen[key] < ts:
                seen[key] = ts
            seen.move_to_end(key)
            touched[key] = r
            hits += 1
            append(r)
        self._stats.hits += hits
        return out

    def assign(self, key: str, ts: int) -> int:
        """Give ``key`` an own row now, whatever its count (restoring rows published after a checkpoint);
        returns its row, or 0 when the table is full and nothing is idle at ``ts``. Not a touch.

        >>> t = IdTable(capacity=1, min_count=5, idle_ms=10)
        >>> t.assign("a", 0), t.assign("a", 1), t.assign("b", 2), t.take_touched()
        (1, 1, 0, {})
        """
        r = self._row.get(key)
        if r is not None:
            return r
        r = self._take_row(ts)
        if r:
            self._pending.pop(key, None)
            self._admit(key, r, ts)
            self._touched.pop(key, None)
            self._admitted.pop()
        return r

    def _miss(self, key: str, ts: int) -> int:
        """An id without an own row occurs at ``ts``: count it, admit it if it may and can, else row 0."""
        pending = self._pending
        entry = pending.get(key)
        if entry is None:
            entry = pending[key] = [0, ts]
        else:
            pending.move_to_end(key)
            if entry[1] < ts:
                entry[1] = ts
        entry[0] += 1
        if entry[0] >= self.min_count:
            r = self._take_row(ts)
            if r:
                del pending[key]
                self._admit(key, r, entry[1])
                return r
            self._stats.full += 1
        self._stats.misses += 1
        if len(pending) > self.pending_cap:
            pending.popitem(last=False)
            self._stats.dropped += 1
        return 0

    def _take_row(self, ts: int) -> int:
        """The lowest free row, else the row of the least recently touched own row if idle at ``ts``, else 0."""
        if not self._free and self._next > self.capacity:
            oldest, last_seen = next(iter(self._seen.items()))
            if last_seen + self.idle_ms > ts:
                return 0
            self._evict(oldest)
        if self._free:
            return heapq.heappop(self._free)
        self._next += 1
        return self._next - 1

    def _admit(self, key: str, r: int, last_seen: int) -> None:
        self._row[key] = r
        self._seen[key] = last_seen
        self._ids[r] = key
        self._touched[key] = r
        self._admitted.append((key, r))
        self._stats.admissions += 1

    def _evict(self, key: str) -> None:
        r = self._row.pop(key)
        del self._seen[key]
        self._ids[r] = None
        heapq.heappush(self._free, r)
        self._touched.pop(key, None)
        self._evicted.append((key, r))
        self._stats.evictions += 1

    def expire(self, watermark_ms: int) -> int:
        """Evict own rows idle at the watermark (``last_seen + idle_ms <= watermark_ms``), walking the
        touch order from the front, and forget pending ids idle as long; return the rows evicted.

        >>> t = IdTable(capacity=4, min_count=1, idle_ms=10)
        >>> t.observe(["a"], ts=0), t.observe(["b"], ts=5)
        ([1], [2])
        >>> t.expire(9), t.expire(10), t.take_evicted(), t.rows(["a", "b"])
        (0, 1, [('a', 1)], [0, 2])
        """
        seen, limit, evicted = self._seen, watermark_ms - self.idle_ms, 0
        while seen:
            key, last_seen = next(iter(seen.items()))
            if last_seen > limit:
                break
            self._evict(key)
            evicted += 1
        pending = self._pending
        while pending:
            key, entry = next(iter(pending.items()))
            if entry[1] > limit:
                break
            del pending[key]
            self._stats.dropped += 1
        return evicted

    def take_admitted(self) -> list[tuple[str, int]]:
        """``(id, row)`` admitted since the last call, in order (initialise those rows), and clear."""
        out, self._admitted = self._admitted, []
        return out

    def take_evicted(self) -> list[tuple[str, int]]:
        """``(id, row)`` evicted since the last call, in order, and clear. A row can appear here and in
        :meth:`take_admitted` (reused); apply evictions before admissions."""
        out, self._evicted = self._evicted, []
        return out

    def take_touched(self) -> dict[str, int]:
        """``id -> row`` of the own rows touched (hit or admitted) since the last call and still held
        (evicted ids are removed), and clear: the rows to publish.

        >>> t = IdTable(capacity=1, min_count=1, idle_ms=10)
        >>> _ = t.observe(["a", "a"], ts=0)
        >>> t.take_touched(), t.take_touched()
        ({'a': 1}, {})
        >>> _ = t.observe(["a"], ts=1); _ = t.expire(11)
        >>> t.take_touched()
        {}
        """
        out, self._touched = self._touched, {}
        return out

    def snapshot(self) -> dict[str, Any]:
        """The whole state as plain lists, ints and strings (JSON / msgpack), for a checkpoint: config,
        own rows ``[id, row, last_seen]`` and pending ``[id, count, last_seen]`` in touch order, the free
        rows, the not yet taken admitted / evicted / touched, and the counters.

        >>> t = IdTable(capacity=2, min_count=2, idle_ms=10)
        >>> _ = t.observe(["a", "a", "b"], ts=3)
        >>> s = t.snapshot()
        >>> s["rows"], s["pending"], s["free"], s["next_row"]
        ([['a', 1, 3]], [['b', 1, 3]], [], 2)
        >>> IdTable.restore(s).observe(["b", "a"], ts=4) == t.observe(["b", "a"], ts=4)
        True
        """
        row = self._row
        return {
            "version": SNAPSHOT_VERSION,
            "capacity": self.capacity,
            "min_count": self.min_count,
            "idle_ms": self.idle_ms,
            "pending_cap": self.pending_cap,
            "rows": [[key, row[key], last_seen] for key, last_seen in self._seen.items()],
            "pending": [[key, count, last_seen] for key, (count, last_seen) in self._pending.items()],
            "free": sorted(self._free),
            "next_row": self._next,
            "admitted": [list(p) for p in self._admitted],
            "evicted": [list(p) for p in self._evicted],
            "touched": [[key, r] for key, r in self._touched.items()],
            "stats": dataclasses.asdict(self._stats),
        }

    @classmethod
    def restore(cls, snapshot: Mapping[str, Any]) -> IdTable:
        """The table a :meth:`snapshot` was taken of (also after a JSON / msgpack round trip); raises
        ``ValueError`` on an inconsistent snapshot."""
        _check(snapshot.get("version") == SNAPSHOT_VERSION, f"unknown snapshot version {snapshot.get('version')!r}")
        t = cls(snapshot["capacity"], snapshot["min_count"], snapshot["idle_ms"], snapshot["pending_cap"])
        t._next = snapshot["next_row"]
        _check(1 <= t._next <= t.capacity + 1, f"next_row {t._next} out of range")
        for key, r, last_seen in snapshot["rows"]:
            _check(0 < r < t._next, f"row {r} of {key!r} out of range")
            _check(key not in t._row and t._ids[r] is None, f"row {r} / id {key!r} used twice")
            t._row[key], t._seen[key], t._ids[r] = r, last_seen, key
        t._free = sorted(snapshot["free"])
        _check(sorted(t._free + list(t._row.values())) == list(range(1, t._next)), "free rows do not match used rows")
        for key, count, last_seen in snapshot["pending"]:
            _check(key not in t._row and key not in t._pending and count >= 1, f"bad pending entry {key!r}")
            t._pending[key] = [count, last_seen]
        _check(len(t._pending) <= t.pending_cap, "more pending ids than pending_cap")
        t._admitted = [(key, r) for key, r in snapshot["admitted"]]
        t._evicted = [(key, r) for key, r in snapshot["evicted"]]
        t._touched = {key: r for key, r in snapshot["touched"]}
        t._stats = IdTableStats(**snapshot["stats"])
        return t
