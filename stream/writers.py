"""Exactly-once feature writers: one Lua call per entity per batch, one pipeline per batch.

:class:`UserStateWriter` applies a batch of the user-keyed events topic (last-N sequences, user and
user x category tiles, dedup, replay guard) with ``user_state.lua``; :class:`EntityStatsWriter` applies
forwarded first deliveries to item or author tiles with ``entity_stats.lua``. Both take a sync
``redis.Redis`` (the Faust agents call them from a worker thread); scripts run by EVALSHA in one
non-transactional pipeline, loaded on NOSCRIPT. A batch may be written again
after a crash: the guard makes the second write a no-op.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import redis

from filters.events import EVENT_TYPES
from filters.sequences import encode_member, sequence_capacities
from filters.tiles import TileLayout
from infra import keys, metrics
from infra.lua import Script
from infra.redis_client import require_binary_client
from infra.settings import Settings
from stream.deliveries import Delivery, ForwardedDelivery

__all__ = [
    "EntityStatsWriter",
    "EntityWriteResult",
    "UserStateWriter",
    "UserWriteResult",
]

_TYPE_INDEX = {t: i for i, t in enumerate(EVENT_TYPES)}
_Call = tuple[list[str], list[Any]]


def _ttls(settings: Settings, layout: TileLayout) -> tuple[int, int, int]:
    """Wall-clock safety TTLs (ms) of tile blobs, dedup sets and guards: beyond retention, never inside."""
    safety = settings.bloom.safety_ttl_days * 86_400_000
    tiles = max(r.tile_ms * r.slots for r in layout.rings) + safety
    dedup = settings.stats.dedup_horizon_ms + settings.stats.allowed_lateness_ms + safety
    guard = settings.kafka.retention_ms + safety
    return tiles, dedup, guard


@dataclass
class UserWriteResult:
    """What one user-stage batch did; ``first[i]`` belongs to ``deliveries[i]`` as passed in."""

    partition: int
    deliveries: Sequence[Delivery]
    first: list[bool]
    applied: int = 0
    replayed: int = 0
    duplicates: int = 0
    late: int = 0
    appended: dict[str, int] = field(default_factory=dict)
    late_inserted: dict[str, int] = field(default_factory=dict)
    lengths: dict[str, list[int]] = field(default_factory=dict)
    tile_updates: dict[str, int] = field(default_factory=dict)

    @property
    def first_deliveries(self) -> list[Delivery]:
        """The deliveries that are the first of their ``event_id`` (replays included), in input order."""
        return [d for d, f in zip(self.deliveries, self.first, strict=True) if f]

    def forwards(self) -> list[ForwardedDelivery]:
        """:attr:`first_deliveries` as forwarded deliveries for the item / author repartition topics."""
        return [d.forwarded(self.partition) for d in self.first_deliveries]

    def record_guard_metrics(self) -> None:
        """Add ``replayed`` / ``duplicates`` / ``late`` to the REPLAYED / DUPLICATES / LATE collectors
        (stage ``user``); the writer does NOT do this itself — the stage owns these counters."""
        metrics.REPLAYED_SKIPPED.labels(stage="user").inc(self.replayed)
        metrics.DUPLICATES_DROPPED.labels(stage="user").inc(self.duplicates)
        metrics.LATE_DROPPED.labels(stage="user").inc(self.late)

    def record_metrics(self) -> None:
        """Add this batch to the SEQ_* and TILE_UPDATES collectors (done by ``write`` by default)."""
        for action, count in self.appended.items():
            metrics.SEQ_APPENDED.labels(action=action).inc(count)
        for action, count in self.late_inserted.items():
            metrics.SEQ_LATE_INSERTS.labels(action=action).inc(count)
        for action, lengths in self.lengths.items():
            hist = metrics.SEQ_LENGTH.labels(action=action)
            for length in lengths:
                hist.observe(length)
        for kind, count in self.tile_updates.items():
            metrics.TILE_UPDATES.labels(kind=kind).inc(count)


@dataclass
class EntityWriteResult:
    """What one entity-stage batch did (counts over all deliveries passed in)."""

    kind: str
    applied: int = 0
    replayed: int = 0
    late: int = 0
    no_entity: int = 0

    def record_guard_metrics(self) -> None:
        """Add ``replayed`` / ``late`` to the REPLAYED / LATE collectors (stage = kind); not done by
        the writer itself — the stage owns these counters."""
        metrics.REPLAYED_SKIPPED.labels(stage=self.kind).inc(self.replayed)
        metrics.LATE_DROPPED.labels(stage=self.kind).inc(self.late)

    def record_metrics(self) -> None:
        """Add this batch to TILE_UPDATES (done by ``write`` by default)."""
        metrics.TILE_UPDATES.labels(kind=self.kind).inc(self.applied)


class _Writer:
    """What both writers hold: the client, the settings, the tile layout and their Lua script."""

    script_name = ""

    def __init__(
        self,
        client: redis.Redis,
        settings: Settings,
        *,
        record_metrics: bool = True,
    ) -> None:
        require_binary_client(client)
        self.client = client
        self.settings = settings
        self.layout = TileLayout.from_settings(settings.stats)
        self.record = record_metrics
        self._script = Script("tiles_lib.lua", self.script_name)
        self._ttl_tiles, self._ttl_dedup, self._ttl_guard = _ttls(settings, self.layout)
        self._setup(settings)

    def _setup(self, settings: Settings) -> None:
        """Subclass hook: precompute the script's fixed leading arguments."""


class UserStateWriter(_Writer):
    """Applies user-stage batches with :meth:`write`."""

    script_name = "user_state.lua"

    def _setup(self, settings: Settings) -> None:
        self.capacities = sequence_capacities(settings.lastn)
        self._head = [settings.stats.dedup_horizon_ms, self._ttl_tiles, self._ttl_dedup, self._ttl_guard]
        self._layout_args = self.layout.lua_args()

    def _plan(self, partition: int, deliveries: Sequence[Delivery]) -> tuple[list[_Call], list[list[int]]]:
        by_user: dict[str, list[int]] = {}
        for i, d in enumerate(deliveries):
            by_user.setdefault(d.event.user_id, []).append(i)
        calls: list[_Call] = []
        groups: list[list[int]] = []
        for user, idx in by_user.items():
            idx.sort(key=lambda i: deliveries[i].offset)
            tag = keys.entity_tag("user", user)
            script_keys = [keys.applied(tag), keys.dedup(tag), keys.dedup_times(tag),
                           keys.stats("user", user)]
            slot: dict[str, int] = {}
            seq_args: list[Any] = []
            for i in idx:
                etype = deliveries[i].event.type
                if etype in self.capacities and etype not in slot:
                    script_keys.append(keys.sequence(user, etype))
                    slot[etype] = len(script_keys)
                    seq_args += [_TYPE_INDEX[etype], self.capacities[etype], len(script_keys)]
            cat_slot: dict[str, int] = {}
            events: list[Any] = []
            for i in idx:
                d = deliveries[i]
                ev = d.event
                cat = d.category
                if cat is not None and not d.stats_late and cat not in cat_slot:
                    script_keys.append(keys.stats("user_category", (user, cat)))
                    cat_slot[cat] = len(script_keys)
                member = encode_member(ev.event_id, ev.item_id, d.category, d.author_id)
                events += [d.offset, ev.event_id, _TYPE_INDEX[ev.type], ev.ts, int(d.stats_late),
                           cat_slot.get(cat, 0) if cat is not None else 0, member]
            args = [partition, *self._head, len(slot), *seq_args, *self._layout_args, len(idx), *events]
            calls.append((script_keys, args))
            groups.append(idx)
        return calls, groups

    def _finish(
        self, partition: int, deliveries: Sequence[Delivery], groups: list[list[int]], replies: list[Any]
    ) -> UserWriteResult:
        first = [False] * len(deliveries)
        res = UserWriteResult(partition, deliveries, first)
        for idx, reply in zip(groups, replies, strict=True):
            statuses = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
            for i, st in zip(idx, statuses, strict=True):
                d = deliveries[i]
                first[i] = st in "AR"
                if st == "A":
                    res.applied += 1
                    if d.stats_late:
                        res.late += 1
                    else:
                        res.tile_updates["user"] = res.tile_updates.get("user", 0) + 1
                        if d.category is not None:
                            res.tile_updates["user_category"] = res.tile_updates.get("user_category", 0) + 1
                elif st == "D":
                    res.duplicates += 1
                else:
                    res.replayed += 1
            rest = reply[1:]
            for k in range(0, len(rest), 4):
                action = EVENT_TYPES[int(rest[k])]
                res.appended[action] = res.appended.get(action, 0) + int(rest[k + 1])
                res.late_inserted[action] = res.late_inserted.get(action, 0) + int(rest[k + 2])
                res.lengths.setdefault(action, []).append(int(rest[k + 3]))
        if self.record:
            res.record_metrics()
        return res

    def write(self, partition: int, deliveries: Sequence[Delivery]) -> UserWriteResult:
        """Apply one batch of ``partition`` with a sync client (one pipeline, one script call per user).

        Safe to call again with the same (or an overlapping) batch: replayed offsets change nothing.
        Raises :class:`~infra.errors.StateError` if a script fails; connection errors propagate (retry
        the whole batch).
        """
        calls, groups = self._plan(partition, deliveries)
        replies = self._script.run(self.client, calls) if calls else []
        return self._finish(partition, deliveries, groups, replies)


class EntityStatsWriter(_Writer):
    """Applies forwarded first deliveries to item or author tiles, guarded per source partition."""

    script_name = "entity_stats.lua"

    def _setup(self, settings: Settings) -> None:
        self._head = [self._ttl_tiles, self._ttl_guard, *self.layout.lua_args()]

    def _plan(
        self, kind: Literal["item", "author"], deliveries: Sequence[ForwardedDelivery]
    ) -> tuple[list[_Call], int]:
        if kind not in ("item", "author"):
            msg = f"kind must be 'item' or 'author', not {kind!r}"
            raise ValueError(msg)
        by_entity: dict[str, list[ForwardedDelivery]] = {}
        no_entity = 0
        for d in deliveries:
            entity = d.event.item_id if kind == "item" else d.author_id
            if entity is None:
                no_entity += 1
                continue
            by_entity.setdefault(entity, []).append(d)
        calls: list[_Call] = []
        for entity, group in by_entity.items():
            tag = keys.entity_tag(kind, entity)
            events: list[Any] = []
            for d in group:
                events += [d.source_partition, d.source_offset, _TYPE_INDEX[d.event.type], d.event.ts,
                           int(d.stats_late)]
            calls.append(([keys.applied(tag), keys.stats(kind, entity)], [*self._head, len(group), *events]))
        return calls, no_entity

    def _finish(self, kind: str, replies: list[Any], no_entity: int) -> EntityWriteResult:
        res = EntityWriteResult(kind, no_entity=no_entity)
        for reply in replies:
            statuses = reply.decode() if isinstance(reply, bytes) else str(reply)
            res.applied += statuses.count("A")
            res.late += statuses.count("L")
            res.replayed += statuses.count("R")
        if self.record:
            res.record_metrics()
        return res

    def write(
        self, kind: Literal["item", "author"], deliveries: Sequence[ForwardedDelivery]
    ) -> EntityWriteResult:
        """Apply one batch of forwarded deliveries to ``kind`` tiles (deliveries without an author are
        skipped for ``author``). Idempotent under replays, like :meth:`UserStateWriter.write`."""
        calls, no_entity = self._plan(kind, deliveries)
        replies = self._script.run(self.client, calls) if calls else []
        return self._finish(kind, replies, no_entity)
