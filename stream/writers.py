"""Exactly-once feature writers: one Lua call per shard per batch, all calls of a batch in one pipeline.

:class:`UserBatchWriter` applies a batch of the user-keyed events topic — exposure Bloom filters,
last-N sequences, user and user × category tiles, dedup and the replay guard — with ``user_batch.lua``;
:class:`EntityBatchWriter` applies forwarded first deliveries to item or author tiles with
``entity_batch.lua``. Each call covers every entity of one shard (``redis.shards``; all its keys share a
hash tag, so one slot on Redis Cluster). Python does what needs no stored state — grouping by shard,
hashing impressions for the Bloom filters, ordering by source position — and Lua what does: the guard
and dedup decision, tile epochs, sub-slice capacity. A batch may be written again after a crash: the
guard makes the second write a no-op.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import redis

from filters.bloom import item_hashes
from filters.events import EVENT_TYPES
from filters.sequences import encode_member, sequence_capacities
from filters.slices import SlicePlan
from filters.tiles import TileLayout
from infra import metrics
from infra.keys import KeyLayout
from infra.lua import Call, Script
from infra.redis_client import require_binary_client
from infra.settings import MS_PER_DAY, Settings
from stream.deliveries import Delivery, ForwardedDelivery

__all__ = ["EntityBatchWriter", "EntityWriteResult", "UserBatchWriter", "UserWriteResult"]

_TYPE_INDEX = {t: i for i, t in enumerate(EVENT_TYPES)}


def _ttls(settings: Settings, layout: TileLayout) -> tuple[int, int, int]:
    """Wall-clock safety TTLs (ms) of tile blobs, dedup sets and guards: beyond retention, never inside."""
    safety = settings.bloom.safety_ttl_days * MS_PER_DAY
    tiles = max(r.tile_ms * r.slots for r in layout.rings) + safety
    dedup = settings.stats.dedup_horizon_ms + settings.stats.allowed_lateness_ms + safety
    guard = settings.kafka.retention_ms + safety
    return tiles, dedup, guard


@dataclass
class UserWriteResult:
    """What one user-stage batch did; ``statuses[p][i]`` belongs to ``batch[p][i]`` as passed in
    (``A`` applied, ``D`` duplicate, ``R`` replay of a first delivery, ``r`` replay of a duplicate)."""

    statuses: dict[int, list[str]] = field(default_factory=dict)
    bloom_added: int = 0
    slices_deleted: int = 0
    appended: dict[str, int] = field(default_factory=dict)
    trimmed: dict[str, int] = field(default_factory=dict)
    tile_updates: dict[str, int] = field(default_factory=dict)
    calls: int = 0

    def count(self, codes: str) -> int:
        """How many deliveries have one of these status codes."""
        return sum(st in codes for sts in self.statuses.values() for st in sts)

    def record_metrics(self) -> None:
        """Add this batch to the write-path collectors."""
        metrics.REPLAYED_SKIPPED.labels(stage="user").inc(self.count("Rr"))
        metrics.DUPLICATES_DROPPED.labels(stage="user").inc(self.count("D"))
        metrics.BLOOM_ADDS.inc(self.bloom_added)
        metrics.SCRIPT_CALLS.labels(stage="user").inc(self.calls)
        for action, n in self.appended.items():
            metrics.SEQ_APPENDED.labels(action=action).inc(n)
        for action, n in self.trimmed.items():
            metrics.SEQ_TRIMMED.labels(action=action).inc(n)
        for kind, n in self.tile_updates.items():
            metrics.TILE_UPDATES.labels(kind=kind).inc(n)


@dataclass
class EntityWriteResult:
    """What one entity-stage batch did (counts over all deliveries passed in)."""

    kind: str
    applied: int = 0
    replayed: int = 0
    late: int = 0
    no_entity: int = 0
    calls: int = 0

    def record_metrics(self) -> None:
        """Add this batch to the write-path collectors (stage = kind)."""
        metrics.REPLAYED_SKIPPED.labels(stage=self.kind).inc(self.replayed)
        metrics.LATE_DROPPED.labels(stage=self.kind).inc(self.late)
        metrics.TILE_UPDATES.labels(kind=self.kind).inc(self.applied)
        metrics.SCRIPT_CALLS.labels(stage=self.kind).inc(self.calls)


class _Writer:
    """What both writers hold: the client, the key layout, the tile layout, TTLs and their script."""

    script_names: tuple[str, ...] = ()

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        require_binary_client(client)
        self.client = client
        self.settings = settings
        self.keys = KeyLayout(settings.redis.shards)
        self.layout = TileLayout.from_settings(settings.stats)
        self.script = Script(*self.script_names)
        self._ttl_tiles, self._ttl_dedup, self._ttl_guard = _ttls(settings, self.layout)


@dataclass
class _UserCall:
    """The KEYS / ARGV of one user-shard call being built, and which deliveries it carries."""

    keys: list[str]
    parts: dict[int, int] = field(default_factory=dict)  # source partition -> part no (1-based)
    part_args: list[Any] = field(default_factory=list)
    users: dict[str, int] = field(default_factory=dict)  # user -> user no (1-based)
    user_args: list[Any] = field(default_factory=list)
    events: list[Any] = field(default_factory=list)
    refs: list[tuple[int, int]] = field(default_factory=list)  # (partition, position in its list)
    slots: dict[str, int] = field(default_factory=dict)  # key -> KEYS index (1-based)

    def slot(self, key: str) -> int:
        index = self.slots.get(key)
        if index is None:
            self.keys.append(key)
            index = self.slots[key] = len(self.keys)
        return index


class UserBatchWriter(_Writer):
    """Applies user-stage batches with :meth:`write` (one ``user_batch.lua`` call per user shard)."""

    script_names = ("tiles_lib.lua", "bloom_lib.lua", "user_batch.lua")

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        super().__init__(client, settings)
        self.capacities = sequence_capacities(settings.lastn)
        self.plan = SlicePlan.from_settings(settings.bloom)
        bloom_ttl_s = (self.plan.retention_ms + self.plan.slice_ms + settings.bloom.safety_ttl_days * MS_PER_DAY)
        self._head: list[Any] = [
            self._ttl_tiles, settings.stats.dedup_horizon_ms, self._ttl_dedup, self._ttl_guard,
            *self.layout.lua_args(),
            self.plan.retention_ms, self.plan.slice_ms, bloom_ttl_s // 1000,
            ";".join(p.encode() for p in self.plan.table),
            len(self.capacities),
        ]
        for etype, cap in self.capacities.items():
            self._head += [_TYPE_INDEX[etype], cap]
        item_hashes(["warm-up"])  # compile the hash loop (or load it from numba's cache) before the first batch

    def _bloom_args(self, batch: Mapping[int, Sequence[Delivery]], watermarks: Mapping[int, int]) -> dict[
        tuple[int, int], list[Any]
    ]:
        """(partition, position) -> [slice start, h1, h2, h3] of every impression still inside retention."""
        refs: list[tuple[int, int]] = []
        items: list[str] = []
        starts: list[int] = []
        slice_ms, retention = self.plan.slice_ms, self.plan.retention_ms
        for p, deliveries in batch.items():
            horizon = watermarks.get(p, -1) - retention
            for i, d in enumerate(deliveries):
                if d.event.type == "impression":
                    start = d.event.ts - d.event.ts % slice_ms
                    if start + slice_ms > horizon:
                        refs.append((p, i))
                        items.append(d.event.item_id)
                        starts.append(start)
        if not items:
            return {}
        h1, h2, h3 = item_hashes(items, self.settings.bloom.hash_version).tolist()
        return {ref: [s, a, b, c] for ref, s, a, b, c in zip(refs, starts, h1, h2, h3, strict=True)}

    def _user_no(self, call: _UserCall, user: str, types: set[str], has_bloom: bool) -> int:
        number = call.users.get(user)
        if number is None:
            keys, version = self.keys, self.settings.bloom.hash_version
            tiles = call.slot(keys.stats("user", user))
            bidx = call.slot(keys.bloom_index(user, version)) if has_bloom else 0
            seq: list[Any] = []
            for etype in types:
                if etype in self.capacities:
                    seq += [_TYPE_INDEX[etype], call.slot(keys.sequence(user, etype))]
            call.user_args += [tiles, bidx, keys.slice_key_prefix(user, version), len(seq) // 2, *seq]
            number = call.users[user] = len(call.users) + 1
        return number

    def _plan(self, batch: Mapping[int, Sequence[Delivery]], watermarks: Mapping[int, int]) -> list[_UserCall]:
        bloom = self._bloom_args(batch, watermarks)
        bloom_users = {batch[p][i].event.user_id for p, i in bloom}
        types: dict[str, set[str]] = {}
        for deliveries in batch.values():
            for d in deliveries:
                types.setdefault(d.event.user_id, set()).add(d.event.type)
        calls: dict[int, _UserCall] = {}
        keys = self.keys
        for p, deliveries in batch.items():
            for i, d in enumerate(deliveries):
                ev = d.event
                shard = keys.shard("user", ev.user_id)
                call = calls.get(shard)
                if call is None:
                    call = calls[shard] = _UserCall([keys.applied("user", shard)])
                part = call.parts.get(p)
                if part is None:
                    part = call.parts[p] = len(call.parts) + 1
                    call.part_args += [p, call.slot(keys.dedup(shard, p)), call.slot(keys.dedup_times(shard, p)),
                                       watermarks.get(p, -1)]
                user = self._user_no(call, ev.user_id, types[ev.user_id], ev.user_id in bloom_users)
                cat = d.category
                cat_key = call.slot(keys.stats("user_category", (ev.user_id, cat))) if (
                    cat is not None and not d.stats_late) else 0
                member = encode_member(ev.event_id, ev.item_id, cat, d.author_id) if ev.type in self.capacities \
                    else b""
                call.events += [part, d.offset, d.index, ev.event_id, _TYPE_INDEX[ev.type], ev.ts,
                                int(d.stats_late), user, cat_key, member, *bloom.get((p, i), ("", "", "", ""))]
                call.refs.append((p, i))
        return list(calls.values())

    def _args(self, call: _UserCall) -> list[Any]:
        return [*self._head, len(call.parts), *call.part_args, len(call.users), *call.user_args,
                len(call.refs), *call.events]

    def write(self, batch: Mapping[int, Sequence[Delivery]], watermarks: Mapping[int, int]) -> UserWriteResult:
        """Apply ``partition -> deliveries`` (each list in source-position order) in one pipeline.

        ``watermarks`` are the partitions' event-time watermarks after the batch (they expire Bloom
        slices). Safe to call again with the same or an overlapping batch: replayed positions change
        nothing. Raises :class:`~infra.errors.StateError` if a script fails; connection errors propagate
        (retry the whole batch).
        """
        calls = self._plan(batch, watermarks)
        res = UserWriteResult(statuses={p: [""] * len(ds) for p, ds in batch.items()}, calls=len(calls))
        script_calls: list[Call] = [(c.keys, self._args(c)) for c in calls]
        replies = self.script.run(self.client, script_calls) if calls else []
        for call, reply in zip(calls, replies, strict=True):
            for (p, i), st in zip(call.refs, reply[0].decode(), strict=True):
                res.statuses[p][i] = st
            res.bloom_added += int(reply[1])
            res.slices_deleted += int(reply[2])
            rest = reply[3:]
            for k in range(0, len(rest), 3):
                action = EVENT_TYPES[int(rest[k])]
                res.appended[action] = res.appended.get(action, 0) + int(rest[k + 1])
                res.trimmed[action] = res.trimmed.get(action, 0) + int(rest[k + 2])
        for p, deliveries in batch.items():
            for d, st in zip(deliveries, res.statuses[p], strict=True):
                if st == "A" and not d.stats_late:
                    res.tile_updates["user"] = res.tile_updates.get("user", 0) + 1
                    if d.category is not None:
                        res.tile_updates["user_category"] = res.tile_updates.get("user_category", 0) + 1
        return res


class EntityBatchWriter(_Writer):
    """Applies forwarded first deliveries to item or author tiles, one call per shard, guarded per
    (source partition, repartition partition)."""

    script_names = ("tiles_lib.lua", "entity_batch.lua")

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        super().__init__(client, settings)
        self._head = [self._ttl_tiles, self._ttl_guard, *self.layout.lua_args()]

    def _plan(
        self, kind: Literal["item", "author"], deliveries: Sequence[tuple[int, ForwardedDelivery]]
    ) -> tuple[list[Call], int]:
        if kind not in ("item", "author"):
            msg = f"kind must be 'item' or 'author', not {kind!r}"
            raise ValueError(msg)
        by_shard: dict[int, tuple[list[str], dict[str, int], list[Any]]] = {}
        no_entity = 0
        keys = self.keys
        for via, d in deliveries:
            entity = d.event.item_id if kind == "item" else d.author_id
            if entity is None:
                no_entity += 1
                continue
            shard = keys.shard(kind, entity)
            group = by_shard.get(shard)
            if group is None:
                group = by_shard[shard] = ([keys.applied(kind, shard)], {}, [])
            script_keys, slots, events = group
            blob = keys.stats(kind, entity)
            slot = slots.get(blob)
            if slot is None:
                script_keys.append(blob)
                slot = slots[blob] = len(script_keys)
            events += [f"{d.source_partition}.{via}", d.source_offset, d.source_index, _TYPE_INDEX[d.event.type],
                       d.event.ts, int(d.stats_late), slot]
        calls: list[Call] = [(ks, [*self._head, len(evs) // 7, *evs]) for ks, _, evs in by_shard.values()]
        return calls, no_entity

    def write(
        self, kind: Literal["item", "author"], deliveries: Sequence[tuple[int, ForwardedDelivery]]
    ) -> EntityWriteResult:
        """Apply ``(repartition partition, forwarded delivery)`` pairs to ``kind`` tiles (deliveries
        without an author are skipped for ``author``). Idempotent under replays: the guard of a shard
        remembers the newest source position per (source partition, repartition partition), the unit in
        which Kafka keeps order."""
        calls, no_entity = self._plan(kind, deliveries)
        res = EntityWriteResult(kind, no_entity=no_entity, calls=len(calls))
        for reply in self.script.run(self.client, calls) if calls else []:
            statuses = reply.decode()
            res.applied += statuses.count("A")
            res.late += statuses.count("L")
            res.replayed += statuses.count("R")
        return res
