"""Brute-force reference features, recomputed from the raw events, independent of the product's code.

Partition assignment uses aiokafka's own murmur2 partitioner (what Faust uses), so the per-partition
order, the watermark and therefore the late flags are those the worker sees.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from dataclasses import dataclass

from aiokafka.partitioner import DefaultPartitioner

DAY = 86_400_000
WINDOW_MS = {"1h": 3_600_000, "1d": DAY, "7d": 7 * DAY, "30d": 30 * DAY}


@dataclass(frozen=True)
class Ev:
    event_id: str
    type: str
    user_id: str
    item_id: str
    ts: int
    category: str | None
    author_id: str | None


@functools.cache
def partition_of(key: str, partitions: int) -> int:
    """Where a murmur2 (Java / aiokafka / librdkafka murmur2_random) producer puts this key."""
    all_parts = list(range(partitions))
    return int(DefaultPartitioner()(key.encode(), all_parts, all_parts))


def first_deliveries_with_late(events: list[Ev], partitions: int, lateness_ms: int,
                               max_age_ms: int = 31 * DAY) -> list[tuple[Ev, bool]]:
    """Dedup by event_id (first delivery in its partition's order wins) and flag late deliveries; a delivery
    more than ``max_age_ms`` behind its partition's newest ts is dropped (the worker dead-letters it)."""
    by_partition: dict[int, list[Ev]] = defaultdict(list)
    for ev in events:
        by_partition[partition_of(ev.user_id, partitions)].append(ev)
    out: list[tuple[Ev, bool]] = []
    seen: set[str] = set()
    for evs in by_partition.values():
        max_ts = None
        for ev in evs:
            if max_ts is not None and ev.ts < max_ts - max_age_ms:
                continue  # too_old
            late = max_ts is not None and ev.ts < max_ts - lateness_ms
            max_ts = ev.ts if max_ts is None else max(max_ts, ev.ts)
            if ev.event_id in seen:
                continue
            seen.add(ev.event_id)
            out.append((ev, late))
    return out


def sequences(events: list[Ev], partitions: int, action: str, n: int) -> dict[str, list[Ev]]:
    """Per user: that action's first deliveries sorted by (ts, event_id) descending, first n."""
    per_user: dict[str, list[Ev]] = defaultdict(list)
    for ev, _late in first_deliveries_with_late(events, partitions, 0):
        if ev.type == action:
            per_user[ev.user_id].append(ev)
    return {u: sorted(evs, key=lambda e: (e.ts, e.event_id), reverse=True)[:n] for u, evs in per_user.items()}


def counts(
    events: list[Ev], partitions: int, lateness_ms: int, at: int
) -> dict[tuple[str, object, str, str], int]:
    """(kind, entity, window, type) -> count of non-late first deliveries with ts in [at - W, at)."""
    out: dict[tuple[str, object, str, str], int] = defaultdict(int)
    for ev, late in first_deliveries_with_late(events, partitions, lateness_ms):
        if late:
            continue
        entities: list[tuple[str, object]] = [("user", ev.user_id), ("item", ev.item_id)]
        if ev.author_id is not None:
            entities.append(("author", ev.author_id))
        if ev.category is not None:
            entities.append(("user_category", (ev.user_id, ev.category)))
        for window, size in WINDOW_MS.items():
            if at - size <= ev.ts < at:
                for kind, entity in entities:
                    out[(kind, entity, window, ev.type)] += 1
    return out
