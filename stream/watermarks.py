"""Per-partition event-time watermarks, persisted so that a replay classifies events as the first run did.

The watermark of a partition is the newest event ts seen in it minus the allowed lateness. An event is
*late* for statistics when its ts is below the watermark in force just before it. Because the newest ts
is a function of the partition's prefix, and it is persisted (with the offset it was reached at) only
after every write of a batch succeeded and its dead letters were delivered, a restarted worker resumes
with exactly the clock it had, and an event at or before the clock's position is one whose features (in
every shard) and dead letters are already applied and delivered (see docs/architecture.md: Redis → dead
letters → watermark → offsets).

>>> clock = PartitionClock(lateness_ms=1000)
>>> [clock.observe(ts, offset) for offset, ts in enumerate((5000, 4500, 3999, 6000, 4999))]
[False, False, True, False, True]
>>> clock.max_ts, clock.watermark, clock.covers(4, 0), clock.covers(5, 0)
(6000, 5000, True, False)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import redis

from infra import keys, metrics
from infra.clock import Clock, now_ms
from infra.lua import Script

NO_TS = -1


@dataclass
class PartitionClock:
    """The event-time clock of one partition (pure)."""

    lateness_ms: int
    max_ts: int = NO_TS
    offset: int = -1
    index: int = -1
    # the next source offset to read: every record before it was applied or dead-lettered (stream.resume)
    next_offset: int = 0

    @property
    def watermark(self) -> int:
        """Events with ts below this are late; ``NO_TS`` before the first event."""
        return NO_TS if self.max_ts == NO_TS else self.max_ts - self.lateness_ms

    def covers(self, offset: int, index: int) -> bool:
        """True when the source position ``(offset, index)`` is already inside this clock."""
        return (offset, index) <= (self.offset, self.index)

    def observe(self, ts: int, offset: int, index: int = 0) -> bool:
        """Advance the clock with the event at ``(offset, index)``; True when the event is late (ts below
        the prior watermark). Positions arrive in order; one the clock :meth:`covers` must not be observed."""
        late = self.max_ts != NO_TS and ts < self.max_ts - self.lateness_ms
        if ts > self.max_ts:
            self.max_ts = ts
        self.offset, self.index = offset, index
        return late


class WatermarkStore:
    """Loads and saves :class:`PartitionClock` state in Redis, one hash per (group, topic, partition).

    Clocks are loaded at the start of every batch (one pipelined round trip), so a partition that moved
    to another worker and back is never processed with a stale clock.
    """

    def __init__(
        self, client: redis.Redis, group: str, topic: str, lateness_ms: int, clock: Clock = now_ms
    ) -> None:
        self._redis = client
        self._clock = clock
        self._group = group
        self._topic = topic
        self._lateness_ms = lateness_ms
        self._script = Script("clock_save.lua")

    def load(self, partitions: Iterable[int]) -> dict[int, PartitionClock]:
        """The persisted clocks of these partitions (fresh ones for partitions never seen)."""
        wanted = sorted(set(partitions))
        pipe = self._redis.pipeline(transaction=False)
        for p in wanted:
            pipe.hmget(keys.watermark(self._group, self._topic, p), "max_ts", "offset", "index", "next")
        clocks = {}
        for p, (max_ts, offset, index, nxt) in zip(wanted, pipe.execute(), strict=True):
            clocks[p] = PartitionClock(
                self._lateness_ms,
                NO_TS if max_ts is None else int(max_ts),
                -1 if offset is None else int(offset),
                -1 if index is None else int(index),
                int(nxt) if nxt is not None else (0 if offset is None else int(offset) + 1),
            )
        return clocks

    def save(self, clocks: dict[int, PartitionClock]) -> None:
        """Persist clocks, only forward (``clock_save.lua``: a worker that lost a partition in a rebalance
        cannot put its older clock back); call only after the batch's feature writes succeeded and its
        dead letters were delivered."""
        now_s = self._clock() / 1000
        calls = [([keys.watermark(self._group, self._topic, p)], [c.max_ts, c.offset, c.index, c.next_offset])
                 for p, c in clocks.items()]
        refused = len(calls) - sum(self._script.run(self._redis, calls)) if calls else 0
        if refused:
            metrics.STALE_WRITES_REFUSED.labels(state="clock").inc(refused)
        for p, clock in clocks.items():
            if clock.max_ts != NO_TS:
                metrics.EVENT_TIME_LAG.labels(topic=self._topic, partition=str(p)).set(
                    max(0.0, now_s - clock.max_ts / 1000)
                )
