"""Last-N sequences: the pure reference model of what ``user_state.lua`` does (see docs/sequences.md).

A sequence is a user's entries of one action ordered by ``(ts, event_id)``, at most one entry per
``event_id``, trimmed to the newest ``capacity`` entries. In Redis it is a sorted set scored by ``ts``
whose members are :func:`encode_member` strings; equal scores order bytewise, and a member starts with
``event_id`` + NUL, so the Redis order *is* the ``(ts, event_id)`` order. The Lua script must agree
with :func:`merge` (property-tested against real Redis).

>>> a = Entry("i1", 10, "food", None, "e1"); b = Entry("i2", 5, None, "a7", "e2")
>>> m = merge([a], [b, a, Entry("i3", 20, None, None, "e3")], capacity=2)
>>> [e.event_id for e in m.entries], m.appended, m.late_inserted
(['e1', 'e3'], 2, 1)
>>> [e.item_id for e in last_n(m.entries, 5)]
['i3', 'i1']
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import msgspec

from filters.events import ACTIONS
from infra.errors import ConfigError
from infra.settings import LastNSettings

__all__ = [
    "SEP",
    "Entry",
    "Merge",
    "decode_member",
    "encode_member",
    "last_n",
    "merge",
    "order_key",
    "sequence_capacities",
]

SEP = b"\x00"
"""Field separator inside a member; identifiers never contain control characters."""


class Entry(msgspec.Struct, frozen=True):
    """One sequence entry as served (``event_id`` last so the first four fields read as the spec)."""

    item_id: str
    ts: int
    category: str | None = None
    author_id: str | None = None
    event_id: str = ""


def order_key(entry: Entry) -> tuple[int, str]:
    """The sequence order: event time, then ``event_id`` (code-point order = UTF-8 byte order)."""
    return entry.ts, entry.event_id


def encode_member(event_id: str, item_id: str, category: str | None, author_id: str | None) -> str:
    """The sorted-set member: ``event_id NUL item_id NUL category NUL author_id`` (``None`` = empty).

    Redis stores its UTF-8 bytes; code-point order of the str is the byte order Redis sorts by.

    >>> encode_member("e1", "i9", None, "a1")
    'e1\\x00i9\\x00\\x00a1'
    """
    return "\0".join((event_id, item_id, category or "", author_id or ""))


def decode_member(member: bytes, ts: int) -> Entry:
    """Inverse of :func:`encode_member`, given the member's score.

    >>> decode_member(b"e1\\x00i9\\x00\\x00a1", 7)
    Entry(item_id='i9', ts=7, category=None, author_id='a1', event_id='e1')
    """
    event_id, item_id, category, author_id = member.decode().split("\x00")
    return Entry(item_id, ts, category or None, author_id or None, event_id)


@dataclass(frozen=True)
class Merge:
    """Result of merging a batch: the new sequence (oldest first) and the SEQ_* metric counts."""

    entries: list[Entry]
    appended: int
    late_inserted: int


def merge(sequence: Sequence[Entry], batch: Iterable[Entry], capacity: int) -> Merge:
    """Merge ``batch`` (in delivery order) into ``sequence`` (oldest first) and trim to ``capacity``.

    * an ``event_id`` already present (in the sequence or earlier in the batch) is dropped — the first
      entry of an ``event_id`` wins;
    * the result is ordered by :func:`order_key`, late events landing at their place;
    * only the newest ``capacity`` entries are kept;
    * ``appended`` counts entries added (even if trimmed right away), ``late_inserted`` those whose
      ``ts`` is older than the newest ``ts`` present when they were added.

    >>> merge([], [Entry("i", 3, event_id="b"), Entry("i", 3, event_id="a")], 5).entries[0].event_id
    'a'
    >>> merge([Entry("i", 1, event_id="x")], [], 0).entries
    []
    """
    present = {e.event_id for e in sequence}
    newest = max((e.ts for e in sequence), default=None)
    merged = list(sequence)
    appended = late = 0
    for entry in batch:
        if entry.event_id in present:
            continue
        present.add(entry.event_id)
        merged.append(entry)
        appended += 1
        if newest is not None and entry.ts < newest:
            late += 1
        newest = entry.ts if newest is None else max(newest, entry.ts)
    merged.sort(key=order_key)
    kept = merged[max(0, len(merged) - capacity) :] if capacity > 0 else []
    return Merge(kept, appended, late)


def last_n(
    sequence: Sequence[Entry], n: int, category: str | None = None, before: int | None = None
) -> list[Entry]:
    """The reference read: newest first, optionally only ``category`` and only ``ts < before``.

    >>> seq = [Entry("a", 1, "x"), Entry("b", 2, "y"), Entry("c", 3, "x")]
    >>> [e.item_id for e in last_n(seq, 1, category="x")], [e.item_id for e in last_n(seq, 5, before=3)]
    (['c'], ['b', 'a'])
    """
    out: list[Entry] = []
    for entry in sorted(sequence, key=order_key, reverse=True):
        if len(out) >= n:
            break
        if before is not None and entry.ts >= before:
            continue
        if category is not None and entry.category != category:
            continue
        out.append(entry)
    return out


def sequence_capacities(lastn: LastNSettings) -> dict[str, int]:
    """Event type -> capacity of every sequence kept (impressions only when enabled).

    >>> sequence_capacities(LastNSettings(capacity={"click": 3}, impressions=7))
    {'impression': 7, 'click': 3}
    >>> sequence_capacities(LastNSettings(capacity={"buy": 3}))
    Traceback (most recent call last):
    ...
    infra.errors.ConfigError: lastn.capacity has unknown actions ['buy']; known: ['click', ...]
    """
    unknown = set(lastn.capacity) - set(ACTIONS)
    if unknown:
        msg = f"lastn.capacity has unknown actions {sorted(unknown)}; known: {list(ACTIONS)}"
        raise ConfigError(msg)
    caps = {"impression": lastn.impressions} if lastn.impressions > 0 else {}
    caps.update(lastn.capacity)
    return caps
