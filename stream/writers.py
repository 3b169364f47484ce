"""Exactly-once feature writers: one Lua call per shard per batch, all calls of a batch in one pipeline.

:class:`UserBatchWriter` applies a batch of the user-keyed events topic — exposure Bloom filters,
last-N sequences, user and user × category tiles, dedup and the replay guard — with ``user_batch.lua``;
:class:`EntityBatchWriter` then applies the batch's first deliveries to item and author tiles with
``entity_batch.lua``, guarded per source partition (no repartition topic: a source partition is
processed by one worker, in order, so its positions order every shard it touches). Each call covers
every entity of one shard (``redis.shards``; all its keys share a hash tag: one slot on Redis
Cluster) and carries its batch as one msgpack argument. Python does what needs no stored state —
grouping by shard, hashing impressions for the Bloom filters, pre-aggregating tile increments over the
whole batch in one vectorised pass — and Lua what does: the guard and dedup decision (taking back the
increments of the events it refuses), tile epochs, sub-slice capacity. A batch may be written again
after a crash: the guard makes the second write a no-op.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
import numpy as np
import redis

from filters.bloom import bitmaps_of, item_hashes
from filters.events import EVENT_TYPES
from filters.sequences import encode_member, sequence_capacities
from filters.slices import SlicePlan
from filters.tiles import TileLayout
from infra import metrics
from infra.keys import KeyLayout
from infra.lua import Call, Script
from infra.redis_client import require_binary_client
from infra.settings import MS_PER_DAY, Settings
from stream.deliveries import Delivery
from stream.write_plan import Batch, Prepared, ShardCall, TileEvents, with_cells

__all__ = ["EntityBatchWriter", "EntityWriteResult", "UserBatchWriter", "UserWriteResult"]

_TYPE_INDEX = {t: i for i, t in enumerate(EVENT_TYPES)}
_msgpack = msgspec.msgpack.Encoder()


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
    (``A`` applied, ``D`` duplicate, ``R`` replay of a first delivery, ``r`` replay of a duplicate, ``o``
    replay of an event beyond the dedup horizon)."""

    statuses: dict[int, list[str]] = field(default_factory=dict)
    bloom_added: int = 0
    slices_deleted: int = 0
    appended: dict[str, int] = field(default_factory=dict)
    trimmed: dict[str, int] = field(default_factory=dict)
    calls: int = 0

    def count(self, codes: str) -> int:
        """How many deliveries have one of these status codes."""
        return sum(st in codes for sts in self.statuses.values() for st in sts)

    def join_deliveries(self, batch: Batch) -> dict[int, list[tuple[Delivery, bool]]]:
        """Per partition, the first deliveries (``A``, ``R``) flagged False — what the item/author stage and
        the label join take — and, flagged True, the replayed clicks the dedup cannot tell from duplicates
        (``o``, beyond the dedup horizon), which the join only logs for histories (logging twice is a no-op)."""
        return {p: [(d, st == "o") for d, st in zip(ds, self.statuses[p], strict=True)
                    if st in "AR" or (st == "o" and d.event.type == "click")] for p, ds in batch.items()}

    def record_metrics(self, batch: Batch) -> None:
        """Add this batch to the write-path collectors."""
        metrics.REPLAYED_SKIPPED.labels(stage="user").inc(self.count("Rro"))
        metrics.DUPLICATES_DROPPED.labels(stage="user").inc(self.count("D"))
        metrics.BLOOM_ADDS.inc(self.bloom_added)
        metrics.SCRIPT_CALLS.labels(stage="user").inc(self.calls)
        for action, n in self.appended.items():
            metrics.SEQ_APPENDED.labels(action=action).inc(n)
        for action, n in self.trimmed.items():
            metrics.SEQ_TRIMMED.labels(action=action).inc(n)
        counted = [d for p, ds in batch.items() for d, st in zip(ds, self.statuses[p], strict=True) if st == "A"]
        late = sum(d.stats_late for d in counted)
        metrics.LATE_DROPPED.labels(stage="user").inc(late)
        metrics.TILE_UPDATES.labels(kind="user").inc(len(counted) - late)
        metrics.TILE_UPDATES.labels(kind="user_category").inc(
            sum(1 for d in counted if not d.stats_late and d.category is not None))


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

    def send(self, prepared: Prepared) -> list[Any]:
        """The one Redis round trip of a prepared batch (callable from another thread)."""
        return self.script.run(self.client, prepared.script_calls) if prepared.script_calls else []


class UserBatchWriter(_Writer):
    """Applies user-stage batches with :meth:`write` (one ``user_batch.lua`` call per user shard)."""

    script_names = ("guard_lib.lua", "tiles_lib.lua", "bloom_lib.lua", "user_batch.lua")

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        super().__init__(client, settings)
        self.capacities = sequence_capacities(settings.lastn)
        self.plan = SlicePlan.from_settings(settings.bloom)
        caps: list[int] = []
        for etype, cap in self.capacities.items():
            caps += [_TYPE_INDEX[etype], cap]
        self._head = _msgpack.encode([
            self._ttl_tiles, settings.stats.dedup_horizon_ms, self._ttl_dedup, self._ttl_guard,
            self.layout.lua_args(),
            [self.plan.retention_ms, self.plan.slice_ms, self.plan.key_ttl_s(settings.bloom.safety_ttl_days),
             self.plan.lua_table],
            caps,
        ])
        item_hashes(["warm-up"])  # compile the hash loop (or load it from numba's cache) before the first batch

    def _bloom_args(self, batch: Batch, watermarks: Mapping[int, int]) -> tuple[
        dict[tuple[int, int], list[Any]], dict[str, list[tuple[int, bytes]]]
    ]:
        """(partition, position) -> [slice start, h1, h2, h3] of every impression still inside retention,
        and per user one bitmap per slice with all of them set at the first sub-slice's size (the script
        ORs it in whole while that sub-slice has room; docs/exposure.md)."""
        refs: list[tuple[int, int]] = []
        items: list[str] = []
        starts: list[int] = []
        groups: dict[tuple[str, int], int] = {}
        group: list[int] = []
        plan = self.plan
        for p, deliveries in batch.items():
            watermark = watermarks.get(p, -1)
            for i, d in enumerate(deliveries):
                if d.event.type == "impression":
                    start = plan.writable_start(d.event.ts, watermark)
                    if start is not None:
                        refs.append((p, i))
                        items.append(d.event.item_id)
                        starts.append(start)
                        group.append(groups.setdefault((d.event.user_id, start), len(groups)))
        if not items:
            return {}, {}
        hashes = item_hashes(items, self.settings.bloom.hash_version)
        h1, h2, h3 = hashes.tolist()
        first = self.plan.table[0]
        maps = bitmaps_of(hashes, np.array(group, dtype=np.intp), len(groups), first.m, first.k)
        deltas: dict[str, list[tuple[int, bytes]]] = {}
        for (user, start), g in groups.items():
            deltas.setdefault(user, []).append((start, maps[g].tobytes()))
        extra = {ref: [s, a, b, c] for ref, s, a, b, c in zip(refs, starts, h1, h2, h3, strict=True)}
        return extra, deltas

    def _user_row(self, call: ShardCall, tiles: TileEvents, user: str, types: set[str],
                  deltas: list[tuple[int, bytes]] | None) -> tuple[int, int]:
        keys, version = self.keys, self.settings.bloom.hash_version
        seq: list[int] = []
        for etype in types:
            if etype in self.capacities:
                seq += [_TYPE_INDEX[etype], call.slot(keys.sequence(user, etype))]
        blob = tiles.new_blob()
        row = [call.slot(keys.stats("user", user)),
               call.slot(keys.bloom_index(user, version)) if deltas else 0,
               keys.slice_key_prefix(user, version), seq, deltas or [], blob]
        return call.add_row("users", "u:" + user, row), blob

    def _cat_row(self, call: ShardCall, tiles: TileEvents, user: str, category: str) -> tuple[int, int]:
        key, blob = self.keys.stats("user_category", (user, category)), tiles.new_blob()
        return call.add_row("cats", key, [call.slot(key), blob]), blob

    def _part_row(self, call: ShardCall, shard: int, p: int, batch: Batch, watermarks: Mapping[int, int]) -> int:
        keys, first, last = self.keys, batch[p][0], batch[p][-1]
        row = [p, call.slot(keys.dedup(shard, p)), call.slot(keys.dedup_times(shard, p)), watermarks.get(p, -1),
               [first.offset, first.index, last.offset, last.index]]
        return call.add_row("parts", f"p:{p}", row)

    def _plan(self, batch: Batch, watermarks: Mapping[int, int]) -> tuple[list[ShardCall], TileEvents]:
        bloom, deltas = self._bloom_args(batch, watermarks)
        types: dict[str, set[str]] = {}
        for deliveries in batch.values():
            for d in deliveries:
                types.setdefault(d.event.user_id, set()).add(d.event.type)
        calls: dict[int, ShardCall] = {}
        tiles = TileEvents()
        keys, capacities, add = self.keys, self.capacities, tiles.add
        users: dict[str, tuple[ShardCall, int, int, int]] = {}  # user -> call, shard, row number, tile blob
        cats: dict[tuple[str, str], tuple[int, int]] = {}  # (user, category) -> row number, tile blob
        for p, deliveries in batch.items():
            parts: dict[int, int] = {}  # shard -> row number of partition p in its call
            for i, d in enumerate(deliveries):
                ev = d.event
                known = users.get(ev.user_id)
                if known is None:
                    shard = keys.shard("user", ev.user_id)
                    call = calls.get(shard)
                    if call is None:
                        call = calls[shard] = ShardCall([keys.applied("user", shard)])
                    user_row = self._user_row(call, tiles, ev.user_id, types[ev.user_id], deltas.get(ev.user_id))
                    known = users[ev.user_id] = (call, shard, *user_row)
                call, shard, user, blob = known
                part = parts.get(shard)
                if part is None:
                    part = parts[shard] = self._part_row(call, shard, p, batch, watermarks)
                t = _TYPE_INDEX[ev.type]
                cat = 0
                if not d.stats_late:
                    add(blob, ev.ts, t)
                    if d.category is not None:
                        pair = (ev.user_id, d.category)
                        cat_row = cats.get(pair)
                        if cat_row is None:
                            cat_row = cats[pair] = self._cat_row(call, tiles, *pair)
                        cat = cat_row[0]
                        add(cat_row[1], ev.ts, t)
                member = encode_member(ev.event_id, ev.item_id, d.category, d.author_id) if ev.type in capacities \
                    else ""
                row = [part, d.offset, d.index, ev.event_id, t, ev.ts, int(d.stats_late), user, cat, member]
                extra = bloom.get((p, i))
                call.events.append(row if extra is None else row + extra)
                call.refs.append((p, i))
        return list(calls.values()), tiles

    def prepare(self, batch: Batch, watermarks: Mapping[int, int]) -> Prepared:
        """Plan and encode the calls of ``batch`` (pure CPU: no Redis)."""
        calls, tiles = self._plan(batch, watermarks)
        cells = tiles.cells(self.layout)
        script_calls: list[Call] = []
        for c in calls:
            images, bitmaps = bytearray(), bytearray()
            users = with_cells(c.rows["users"], cells, images)
            for row in users:  # the user's Bloom bitmaps -> [slice start, first byte in the 4th argument]
                refs = []
                for start, bitmap in row[4]:
                    refs.append([start, len(bitmaps) + 1])
                    bitmaps += bitmap
                row[4] = refs
            body = [c.rows["parts"], users, with_cells(c.rows["cats"], cells, images), c.events]
            script_calls.append((c.keys, [self._head, _msgpack.encode(body), bytes(images), bytes(bitmaps)]))
        return Prepared(batch, calls, script_calls)

    def finish(self, prepared: Prepared, replies: list[Any]) -> UserWriteResult:
        """Read the replies of :meth:`send` into a :class:`UserWriteResult`."""
        batch = prepared.batch
        res = UserWriteResult(statuses={p: [""] * len(ds) for p, ds in batch.items()}, calls=len(prepared.calls))
        for call, reply in zip(prepared.calls, replies, strict=True):
            for (p, i), st in zip(call.refs, reply[0].decode(), strict=True):
                res.statuses[p][i] = st
            res.bloom_added += int(reply[1])
            res.slices_deleted += int(reply[2])
            rest = reply[3:]
            for k in range(0, len(rest), 3):
                action = EVENT_TYPES[int(rest[k])]
                res.appended[action] = res.appended.get(action, 0) + int(rest[k + 1])
                res.trimmed[action] = res.trimmed.get(action, 0) + int(rest[k + 2])
        return res

    def write(self, batch: Batch, watermarks: Mapping[int, int]) -> UserWriteResult:
        """Apply ``partition -> deliveries`` (each list in source-position order) in one pipeline.

        ``watermarks`` are the partitions' event-time watermarks after the batch (they expire Bloom
        slices). Safe to call again with the same or an overlapping batch: replayed positions change
        nothing. Raises :class:`~infra.errors.StateError` if a script fails; connection errors propagate
        (retry the whole batch). :meth:`prepare`, :meth:`send` and :meth:`finish` are its three steps.
        """
        prepared = self.prepare(batch, watermarks)
        return self.finish(prepared, self.send(prepared))


class EntityBatchWriter(_Writer):
    """Applies first deliveries to item and author tiles, one call per shard, guarded per source partition."""

    script_names = ("guard_lib.lua", "tiles_lib.lua", "entity_batch.lua")

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        super().__init__(client, settings)
        self._head = _msgpack.encode([self._ttl_tiles, self._ttl_guard, self.layout.lua_args()])

    def _plan(self, kind: Literal["item", "author"], firsts: Batch, tiles: TileEvents) -> tuple[list[ShardCall], int]:
        calls: dict[int, ShardCall] = {}
        seen: dict[str, tuple[ShardCall, int, int]] = {}  # entity -> its call, row number, tile blob number
        no_entity = 0
        keys, add = self.keys, tiles.add
        for p, deliveries in firsts.items():
            for d in deliveries:
                entity = d.event.item_id if kind == "item" else d.author_id
                if entity is None:
                    no_entity += 1
                    continue
                known = seen.get(entity)
                if known is None:
                    shard = keys.shard(kind, entity)
                    call = calls.get(shard)
                    if call is None:
                        call = calls[shard] = ShardCall([keys.applied(kind, shard)], kind=kind)
                    blob, key = tiles.new_blob(), keys.stats(kind, entity)
                    known = seen[entity] = (call, call.add_row("blobs", key, [call.slot(key), blob]), blob)
                call, number, blob = known
                if d.stats_late:
                    call.late += 1
                else:
                    add(blob, d.event.ts, _TYPE_INDEX[d.event.type])
                call.events.append((p, d, number))
        return list(calls.values()), no_entity

    def prepare(self, firsts: Batch, kinds: Sequence[Literal["item", "author"]] = ("item", "author")) -> Prepared:
        """Plan and encode the calls for the first deliveries of a batch (pure CPU: no Redis)."""
        tiles = TileEvents()
        planned = [(kind, *self._plan(kind, firsts, tiles)) for kind in kinds]
        cells = tiles.cells(self.layout)
        spans = [[str(p), ds[0].offset, ds[0].index, ds[-1].offset, ds[-1].index] for p, ds in firsts.items() if ds]
        calls: list[ShardCall] = []
        script_calls: list[Call] = []
        for _, kind_calls, _ in planned:
            for c in kind_calls:
                images = bytearray()
                body = [with_cells(c.rows["blobs"], cells, images), spans]
                calls.append(c)
                script_calls.append((c.keys, [self._head, _msgpack.encode(body), bytes(images)]))
        return Prepared(firsts, calls, script_calls, {kind: no_entity for kind, _, no_entity in planned})

    def send(self, prepared: Prepared) -> list[Any]:
        """The pipeline of a prepared batch, and a second one with the events for the shards whose guard
        had seen a position of the batch (after a crash: the script then sorts replays out one by one)."""
        replies = super().send(prepared)
        again = [n for n, reply in enumerate(replies) if reply == b"?"]
        if again:
            detailed = []
            for n in again:
                keys, args = prepared.script_calls[n]
                rows = [[str(p), d.offset, d.index, _TYPE_INDEX[d.event.type], d.event.ts, int(d.stats_late), number]
                        for p, d, number in prepared.calls[n].events]
                detailed.append((keys, [*args, _msgpack.encode(rows)]))
            for n, reply in zip(again, self.script.run(self.client, detailed), strict=True):
                replies[n] = reply
        return replies

    def finish(self, prepared: Prepared, replies: list[Any]) -> list[EntityWriteResult]:
        """Read the replies of :meth:`send`: one result per kind."""
        results = {kind: EntityWriteResult(kind, no_entity=n) for kind, n in prepared.kinds.items()}
        for call, reply in zip(prepared.calls, replies, strict=True):
            res = results[call.kind]
            res.calls += 1
            if reply == b"":
                res.applied += len(call.events) - call.late
                res.late += call.late
            else:
                statuses = reply.decode()
                res.applied += statuses.count("A")
                res.late += statuses.count("L")
                res.replayed += statuses.count("R")
        return list(results.values())

    def write(self, firsts: Batch, kinds: Sequence[Literal["item", "author"]] = ("item", "author")) -> list[
        EntityWriteResult
    ]:
        """Apply the first deliveries of a batch (``partition -> deliveries`` in source order) to the
        ``kinds`` tiles in one pipeline (deliveries without an author are skipped for ``author``).

        Idempotent under replays: a shard's guard remembers the newest source position per source
        partition, and one worker applies a partition's batches in order.
        """
        prepared = self.prepare(firsts, kinds)
        return self.finish(prepared, self.send(prepared))
