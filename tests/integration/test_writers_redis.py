"""Feature writers and readers against the real Redis: reference streams, replays, duplicates.

A simulated worker pushes seeded random streams (out of order, late, duplicated, replayed after
"crashes") through UserBatchWriter -> first deliveries -> EntityBatchWriter; the served sequences and counts
must equal a brute-force reference computed from the raw deliveries.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pytest
import redis

from filters.events import EVENT_TYPES, Event
from filters.sequences import Entry, last_n, merge, sequence_capacities
from filters.tiles import U32_MAX, TileLayout, apply_events, empty_words, encode_words
from infra.keys import ENTITY_KINDS, KeyLayout
from infra.settings import Settings
from serving.sequences import SequenceReader
from serving.stats import StatsReader
from stream.deliveries import Delivery
from stream.exposure_writer import ExposureWriter
from stream.writers import EntityBatchWriter, UserBatchWriter

pytestmark = pytest.mark.integration
M, H, D = 60_000, 3_600_000, 86_400_000
T0 = 1_700_006_400_000  # UTC midnight
TYPE = {t: i for i, t in enumerate(EVENT_TYPES)}


@pytest.fixture
def settings(redis_service: object) -> Settings:
    base: Settings = redis_service.settings  # type: ignore[attr-defined]
    return base.model_copy(update={"lastn": base.lastn.model_copy(update={
        "capacity": {"click": 7, "like": 3, "collect": 4, "share": 2, "comment": 5}, "impressions": 6})})


@dataclass
class Written:
    """One partition's batch through :class:`UserBatchWriter` and what the writer said of each delivery."""

    partition: int
    deliveries: list[Delivery]
    statuses: list[str]

    def n(self, codes: str, late: bool | None = None) -> int:
        return sum(st in codes and (late is None or d.stats_late == late)
                   for d, st in zip(self.deliveries, self.statuses, strict=True))

    @property
    def applied(self) -> int:
        return self.n("A")

    @property
    def replayed(self) -> int:
        return self.n("Rro")

    @property
    def duplicates(self) -> int:
        return self.n("D")

    @property
    def late(self) -> int:
        return self.n("A", late=True)

    @property
    def first(self) -> list[bool]:
        return [st in "AR" for st in self.statuses]

    def firsts(self) -> dict[int, list[Delivery]]:
        """The first deliveries, as the entity writer gets them."""
        return {self.partition: [d for d, f in zip(self.deliveries, self.first, strict=True) if f]}


def write(users: UserBatchWriter, p: int, deliveries: list[Delivery]) -> Written:
    res = users.write({p: deliveries}, {p: T0 - 40 * D})
    return Written(p, list(deliveries), res.statuses[p])


@pytest.fixture
def r(redis_client: redis.Redis) -> Iterator[redis.Redis]:
    yield redis_client


def snapshot(client: redis.Redis) -> dict[object, object]:
    out: dict[object, object] = {}
    for key in sorted(client.keys("*")):
        kind = client.type(key)
        if kind == b"string":
            out[key] = client.get(key)
        elif kind == b"hash":
            out[key] = client.hgetall(key)
        elif kind == b"zset":
            out[key] = client.zrange(key, 0, -1, withscores=True)
    return out


@dataclass
class World:
    """A random stream for a few users, and the reference bookkeeping of what must be counted."""

    seed: int
    totals: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    parts: dict[int, list[Delivery]] = field(default_factory=lambda: defaultdict(list))
    first: dict[str, Delivery] = field(default_factory=dict)  # event_id -> delivery that counts
    categories: set[tuple[str, str]] = field(default_factory=set)

    @classmethod
    def make(cls, seed: int, n: int = 700, lateness: int = H) -> World:
        rng = random.Random(seed)
        w = cls(seed)
        items = {f"i{k}": (rng.choice(["food", "cars", "art", None]), rng.choice(["a1", "a2", "a3", None]))
                 for k in range(20)}
        users = [f"u{k}" for k in range(6)]
        offsets: dict[int, int] = defaultdict(int)
        max_ts: dict[int, int] = {}
        sent: list[Event] = []
        for i in range(n):
            if sent and rng.random() < 0.12:  # redelivery of an earlier event, later, new offset
                ev = rng.choice(sent)
            else:
                base = T0 + i * 5 * M + rng.randrange(5 * M)
                jitter = rng.choice([0, 0, 0, rng.randrange(30 * M), rng.randrange(3 * H),
                                     rng.randrange(20 * D)])
                item = rng.choice(list(items))
                cat, author = items[item]
                ev = Event(event_id=f"e{i}", type=rng.choice(EVENT_TYPES), user_id=rng.choice(users),
                           item_id=item, ts=base - jitter,
                           category=cat if rng.random() < 0.5 else None, author_id=author)
                sent.append(ev)
            p = int(ev.user_id[1:]) % 3
            max_ts[p] = max(max_ts.get(p, ev.ts), ev.ts)
            late = ev.ts < max_ts[p] - lateness
            d = Delivery(offsets[p], ev, late, items[ev.item_id][0], items[ev.item_id][1])
            offsets[p] += 1
            w.parts[p].append(d)
            if ev.event_id not in w.first:
                w.first[ev.event_id] = d
                if d.category is not None:
                    w.categories.add((ev.user_id, d.category))
        return w

    def run(self, users: UserBatchWriter, entities: EntityBatchWriter, rng: random.Random) -> None:
        """Batches per partition with crash-replays (a batch restarting before the last one's end); the
        first deliveries go to the entity writer right after (sometimes twice: a crash between the two)."""
        cursors = dict.fromkeys(self.parts, 0)
        while any(cursors[p] < len(self.parts[p]) for p in cursors):
            p = rng.choice([p for p in cursors if cursors[p] < len(self.parts[p])])
            start = cursors[p]
            if start and rng.random() < 0.2:
                start = max(0, start - rng.randrange(1, 30))  # crash: redeliver an overlapping prefix
            end = min(len(self.parts[p]), cursors[p] + rng.randrange(1, 60))
            result = write(users, p, self.parts[p][start:end])
            cursors[p] = end
            for name in ("applied", "replayed", "duplicates", "late"):
                self.totals[name] += getattr(result, name)
            firsts = result.firsts()
            if rng.random() < 0.3:  # a crash after the item shards, before the author shards
                entities.write(firsts, kinds=("item",))
            entities.write(firsts)

    def counted(self) -> list[Delivery]:
        return [d for d in self.first.values() if not d.stats_late]

    def newest(self) -> int:
        return max(d.event.ts for d in self.first.values())


def brute_counts(events: list[Delivery], start: int, end: int) -> dict[str, float]:
    counts = dict.fromkeys(EVENT_TYPES, 0.0)
    for d in events:
        if start <= d.event.ts < end:
            counts[d.event.type] += 1
    return counts


def reference_sequences(world: World, settings: Settings) -> dict[tuple[str, str], list[Entry]]:
    caps = sequence_capacities(settings.lastn)
    by_key: dict[tuple[str, str], list[Entry]] = defaultdict(list)
    for d in world.first.values():
        ev = d.event
        by_key[(ev.user_id, ev.type)].append(Entry(ev.item_id, ev.ts, d.category, d.author_id, ev.event_id))
    return {k: merge([], v, caps[k[1]]).entries for k, v in by_key.items() if k[1] in caps}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_reference_stream(r: redis.Redis, settings: Settings, seed: int) -> None:
    world = World.make(seed)
    rng = random.Random(seed)
    world.run(UserBatchWriter(r, settings), EntityBatchWriter(r, settings), rng)
    # redeliveries beyond the dedup horizon whose entry left the sequence count as applied again
    # (they are older than the watermark, so no statistic moves, and they are trimmed again)
    assert len(world.first) <= world.totals["applied"] <= len(world.first) + world.totals["late"]
    assert min(world.totals.values()) > 5, world.totals  # replays, duplicates, late events all happened

    seqs = SequenceReader(r, settings)
    for (user, action), ref in reference_sequences(world, settings).items():
        assert seqs.last_n(user, action, n=100) == last_n(ref, 100), (user, action)
        assert seqs.last_n(user, action, n=2) == last_n(ref, 2)
        for cat in ("food", "cars", "art", "none"):
            for n in (1, 3, 100):
                assert seqs.last_n(user, action, n, category=cat) == last_n(ref, n, category=cat)
        if ref:
            before = ref[len(ref) // 2].ts
            assert seqs.last_n(user, action, 100, before=before) == last_n(ref, 100, before=before)
            assert seqs.last_n(user, action, 100, "food", before) == last_n(ref, 100, "food", before)
    multi = seqs.last_n_multi("u1", {"click": 3, "like": 10, "impression": 2})
    assert multi == {a: seqs.last_n("u1", a, n) for a, n in (("click", 3), ("like", 10), ("impression", 2))}

    stats = StatsReader(r, settings)
    layout = TileLayout.from_settings(settings.stats)
    counted = world.counted()
    entities: dict[str, dict[object, list[Delivery]]] = {k: defaultdict(list) for k in ENTITY_KINDS}
    for d in counted:
        entities["user"][d.event.user_id].append(d)
        entities["item"][d.event.item_id].append(d)
        if d.author_id is not None:
            entities["author"][d.author_id].append(d)
        if d.category is not None:
            entities["user_category"][(d.event.user_id, d.category)].append(d)
    entities["user_category"].update({c: [] for c in world.categories if c not in entities["user_category"]})
    newest, lateness = world.newest(), settings.stats.allowed_lateness_ms
    checked = 0
    for win in layout.windows:
        first_tile = (newest - lateness) // win.tile_ms
        for tile in sorted({first_tile, first_tile + 1, newest // win.tile_ms, newest // win.tile_ms + 1}):
            at = tile * win.tile_ms
            for kind, by_id in entities.items():
                ids = sorted(by_id, key=str)
                matrix = stats.stats_multi(kind, ids, windows=[win.name], actions=EVENT_TYPES, at=at)
                for i, entity in enumerate(ids):
                    got = {k: v for k, v in matrix.row(i)[win.name].items() if k in EVENT_TYPES}
                    assert got == brute_counts(by_id[entity], at - win.window_ms, at), (kind, entity, win, at)
                    checked += 1
    assert checked > 100
    assert sum(len(v) for v in entities["item"].values()) > 50  # the stream really counted things


def test_replaying_everything_changes_nothing(r: redis.Redis, settings: Settings) -> None:
    world = World.make(11, n=300)
    users, ents = UserBatchWriter(r, settings), EntityBatchWriter(r, settings)
    world.run(users, ents, random.Random(5))
    before = snapshot(r)
    for p, deliveries in world.parts.items():
        for k in range(0, len(deliveries), 37):  # different batch boundaries than the first run
            res = write(users, p, deliveries[k : k + 37])
            assert res.applied == res.duplicates == 0 and res.replayed == len(deliveries[k : k + 37])
            assert [r.applied for r in ents.write(res.firsts())] == [0, 0]
    assert snapshot(r) == before


def test_duplicates_with_different_offsets_count_once(r: redis.Redis, settings: Settings) -> None:
    ev = Event(event_id="dup", type="like", user_id="u9", item_id="i1", ts=T0 - 10 * M)
    other = Event(event_id="x", type="like", user_id="u9", item_id="i2", ts=T0 - 5 * M)
    users, ents = UserBatchWriter(r, settings), EntityBatchWriter(r, settings)
    first = write(users, 0, [Delivery(3, ev, category="food", author_id="a1"), Delivery(4, other),
                             Delivery(5, ev, category="food", author_id="a1")])
    assert first.first == [True, True, False] and first.duplicates == 1 and first.applied == 2
    again = write(users, 0, [Delivery(5, ev), Delivery(9, ev, category="food", author_id="a1")])
    assert again.first == [False, False] and again.replayed == 1 and again.duplicates == 1
    ents.write(first.firsts())
    ents.write(again.firsts())
    assert [e.event_id for e in SequenceReader(r, settings).last_n("u9", "like")] == ["x", "dup"]
    stats = StatsReader(r, settings)
    expected = [("user", "u9", 2.0), ("user_category", ("u9", "food"), 1.0), ("item", "i1", 1.0),
                ("item", "i2", 1.0), ("author", "a1", 1.0)]  # "x" has no category and no author
    for kind, entity, likes in expected:
        assert stats.stats(kind, entity, windows=["1h"], at=T0)["1h"]["like"] == likes, kind


def test_lua_sequences_match_the_pure_model(r: redis.Redis, settings: Settings) -> None:
    """Random batches (late, duplicate, tied timestamps) through the script vs filters.sequences.merge."""
    rng = random.Random(42)
    users = UserBatchWriter(r, settings)
    offset = 0  # one partition: offsets grow across users (the guard is per shard and partition)
    for trial in range(25):
        user, cap = f"m{trial}", settings.lastn.capacity["click"]
        pool = [Event(event_id=f"e{rng.randrange(10**6)}", type="click", user_id=user, item_id=f"i{k}",
                      ts=T0 + rng.randrange(40) * 1000) for k in range(rng.randrange(1, 40))]
        model: list[Entry] = []
        ever: set[str] = set()
        for _ in range(rng.randrange(1, 8)):
            batch = [Delivery(offset + k, rng.choice(pool), category=rng.choice(["c", None]))
                     for k in range(rng.randrange(1, 12))]
            offset += len(batch)
            fresh = [Entry(d.event.item_id, d.event.ts, d.category, None, d.event.event_id) for d in batch
                     if d.event.event_id not in ever]
            ever |= {d.event.event_id for d in batch}
            expected = merge(model, fresh, cap)
            trimmed = len(model) + expected.appended - len(expected.entries)
            model = expected.entries
            res = users.write({0: batch}, {0: T0})
            served = SequenceReader(r, settings).last_n(user, "click", n=cap + 5)
            assert served == last_n(model, cap + 5)
            assert res.appended.get("click", 0) == expected.appended
            assert res.trimmed.get("click", 0) == trimmed


def test_lua_tiles_match_the_pure_model(r: redis.Redis, settings: Settings) -> None:
    """The blob written by the script is byte-identical to filters.tiles.apply_events."""
    rng = random.Random(9)
    layout = TileLayout.from_settings(settings.stats)
    ents = EntityBatchWriter(r, settings)
    keys = KeyLayout(settings.redis.shards)
    words = empty_words(layout)
    offset = 0
    for _ in range(30):
        batch = []
        for _ in range(rng.randrange(1, 40)):
            ev = Event(event_id=f"e{offset}", type=rng.choice(EVENT_TYPES), user_id="u", item_id="it",
                       ts=T0 + rng.randrange(-45 * D, 2 * D))
            batch.append(Delivery(offset, ev, rng.random() < 0.1))
            offset += 1
        ents.write({rng.randrange(3): batch}, kinds=("item",))
        apply_events(words, layout, [(d.event.ts, TYPE[d.event.type]) for d in batch if not d.stats_late])
        assert r.get(keys.stats("item", "it")) == encode_words(words)


def test_saturated_counters_stay_exact_when_a_slot_holds_the_tile_or_a_newer_one(r: redis.Redis,
                                                                              settings: Settings) -> None:
    """The script adds a cell's counts on the guess that its slot holds the cell's tile; a slot on a newer
    tile (the event is beyond the ring) gets back the values read, a saturated counter's too."""
    layout = TileLayout.from_settings(settings.stats)
    key = KeyLayout(settings.redis.shards).stats("item", "it")
    ents = EntityBatchWriter(r, settings)
    words = empty_words(layout)
    apply_events(words, layout, [(T0, TYPE["click"])])
    ring = layout.rings[0]
    slot = ring.slot_word(T0 // ring.tile_ms)
    words[slot + 1 + TYPE["click"]] = U32_MAX - 1
    r.set(key, encode_words(words))
    older = T0 - ring.slots * ring.tile_ms  # the same slot of the finest ring, a tile the ring no longer holds
    for offset, ts in enumerate([older, T0 + 1, T0 + 2, older + 1]):
        ev = Event(event_id=f"s{offset}", type="click", user_id="u", item_id="it", ts=ts)
        ents.write({0: [Delivery(offset, ev)]}, kinds=("item",))
        apply_events(words, layout, [(ts, TYPE["click"])])
        assert r.get(key) == encode_words(words), ts
    assert words[slot + 1 + TYPE["click"]] == U32_MAX


def test_foreign_blob_is_reset_and_noscript_is_recovered(r: redis.Redis, settings: Settings) -> None:
    keys = KeyLayout(settings.redis.shards)
    r.set(keys.stats("item", "i1"), b"\xff" * 100)
    r.script_flush()
    ents = EntityBatchWriter(r, settings)
    ev = Event(event_id="e", type="click", user_id="u", item_id="i1", ts=T0 - 1)
    assert ents.write({0: [Delivery(0, ev)]}, kinds=("item",))[0].applied == 1
    counts = StatsReader(r, settings).stats("item", "i1", at=T0)
    assert {w: c["click"] for w, c in counts.items()} == {"1h": 1.0, "1d": 1.0, "7d": 1.0, "30d": 1.0}
    assert r.strlen(keys.stats("item", "i1")) == TileLayout.from_settings(settings.stats).nbytes


def test_duplicate_beyond_dedup_horizon_never_doubles_an_entry(r: redis.Redis, settings: Settings) -> None:
    users = UserBatchWriter(r, settings)
    keys = KeyLayout(settings.redis.shards)
    old = Event(event_id="old", type="share", user_id="u", item_id="i", ts=T0)
    new = Event(event_id="new", type="share", user_id="u", item_id="j", ts=T0 + 3 * D)
    write(users, 0, [Delivery(0, old), Delivery(1, new)])  # "old" leaves the dedup set (horizon 1 day)
    assert r.hget(keys.dedup(keys.shard("user", "u"), 0), "old") is None
    res = write(users, 0, [Delivery(2, old, stats_late=True)])
    assert res.duplicates == 1
    assert [e.event_id for e in SequenceReader(r, settings).last_n("u", "share")] == ["new", "old"]


def test_stats_multi_shapes_and_missing(r: redis.Redis, settings: Settings) -> None:
    stats = StatsReader(r, settings)
    m = stats.stats_multi("item", [f"nope{k}" for k in range(1000)], actions=["click"], at=T0)
    assert m.values.shape == (1000, 4, 2 + 5)
    assert np.all(m.column("1d", "click") == 0)
    assert np.allclose(m.column("1d", "ctr"), settings.stats.prior_rates["ctr"])
    with pytest.raises(ValueError, match="unknown kind"):
        stats.stats_multi("shop", ["x"])
    with pytest.raises(KeyError):
        stats.stats("item", "x", windows=["2h"])


def test_text_clients_are_refused(redis_service: object, settings: Settings) -> None:
    text = redis.Redis.from_url(redis_service.redis_url, decode_responses=True)  # type: ignore[attr-defined]
    for cls in (UserBatchWriter, EntityBatchWriter, SequenceReader, StatsReader):
        with pytest.raises(ValueError, match="decode_responses"):
            cls(text, settings)
    text.close()


def same_shard_items(keys: KeyLayout, n: int) -> list[str]:
    by_shard: dict[int, list[str]] = defaultdict(list)
    k = 0
    while True:
        item = f"it{k}"
        group = by_shard[keys.shard("item", item)]
        group.append(item)
        if len(group) == n:
            return group
        k += 1


def test_a_shard_fed_by_two_source_partitions_counts_both(r: redis.Redis, settings: Settings) -> None:
    """Items of one shard get events from several source partitions, applied by different workers in
    any interleaving: the guard is per source partition, so a high offset of one partition never hides
    a lower offset of another."""
    keys = KeyLayout(settings.redis.shards)
    a, b = same_shard_items(keys, 2)
    ents = EntityBatchWriter(r, settings)
    ev_a = Event(event_id="ea", type="click", user_id="u", item_id=a, ts=T0 - 2)
    ev_b = Event(event_id="eb", type="click", user_id="v", item_id=b, ts=T0 - 1)
    assert ents.write({2: [Delivery(900, ev_b)]}, kinds=("item",))[0].applied == 1
    assert ents.write({1: [Delivery(10, ev_a)]}, kinds=("item",))[0].applied == 1
    assert ents.write({1: [Delivery(10, ev_a)]}, kinds=("item",))[0].replayed == 1
    stats = StatsReader(r, settings)
    assert [stats.stats("item", i, windows=["1h"], at=T0)["1h"]["click"] for i in (a, b)] == [1.0, 1.0]


def test_batched_record_positions_guard_each_event(r: redis.Redis, settings: Settings) -> None:
    """Events of one batched record share an offset; (offset, index) orders and guards them."""
    users = UserBatchWriter(r, settings)
    evs = [Event(event_id=f"b{k}", type="click", user_id="u", item_id=f"i{k}", ts=T0 + k) for k in range(4)]
    first = write(users, 0, [Delivery(7, ev, index=k) for k, ev in enumerate(evs[:2])])
    assert first.statuses == ["A", "A"]
    # the crash-replayed record, now complete, plus the next one
    again = write(users, 0, [Delivery(7, ev, index=k) for k, ev in enumerate(evs)] + [Delivery(8, evs[0])])
    assert again.statuses == ["R", "R", "A", "A", "D"]
    assert [e.event_id for e in SequenceReader(r, settings).last_n("u", "click")] == ["b3", "b2", "b1", "b0"]


def bloom_state(client: redis.Redis) -> dict[object, object]:
    return {k: v for k, v in snapshot(client).items() if b":bf" in k}  # type: ignore[operator]


@pytest.mark.parametrize("seed", [4, 5])
def test_worker_bloom_path_equals_the_item_by_item_rule(r: redis.Redis, settings: Settings, seed: int) -> None:
    """The worker ORs a batch's bitmap in whole while the first sub-slice has room, and walks items one by
    one otherwise; the stand-alone ExposureWriter always walks them (SETBIT per bit). Same impressions,
    in the same batches: identical bitmaps and identical index hashes (counts, sub-slices, rollovers)."""
    rng = random.Random(seed)
    users = {"light": 5, "medium": 120, "heavy": 900}  # impressions per day: heavy rolls over sub-slices
    batches: list[list[Delivery]] = []
    offset = 0
    for day in range(3):
        events = [Event(event_id=f"{u}-{day}-{k}", type="impression", user_id=u,
                        item_id=f"i{rng.randrange(3000) if rng.random() < 0.9 else k % 7}",
                        ts=T0 + day * D + rng.randrange(D)) for u, n in users.items() for k in range(n)]
        rng.shuffle(events)
        for k in range(0, len(events), 97):
            batches.append([Delivery(offset + j, ev) for j, ev in enumerate(events[k : k + 97])])
            offset += 97
    watermark = T0 + 3 * D
    writer = UserBatchWriter(r, settings)
    for batch in batches:
        writer.write({0: batch}, {0: watermark})
    via_worker = bloom_state(r)
    r.flushdb()
    exposures = ExposureWriter(r, settings)
    for batch in batches:
        grouped: dict[str, list[tuple[str, int]]] = defaultdict(list)
        for d in batch:
            grouped[d.event.user_id].append((d.event.item_id, d.event.ts))
        exposures.add(grouped, watermark)
    assert via_worker == bloom_state(r)
    assert any(k.endswith(b":1") for k in via_worker)  # type: ignore[attr-defined]  # a 2nd sub-slice exists


def test_a_replay_beyond_the_dedup_horizon_says_so(r: redis.Redis, settings: Settings) -> None:
    """A replayed event whose dedup entry was trimmed is ``o`` (first or duplicate: unknowable), not ``r``."""
    users = UserBatchWriter(r, settings)
    evs = [Event(event_id="new", type="click", user_id="u", item_id="a", ts=T0),
           Event(event_id="old", type="click", user_id="u", item_id="b", ts=T0 - 3 * D),
           Event(event_id="dup", type="click", user_id="u", item_id="c", ts=T0 - 1000)]
    batch = [Delivery(0, evs[0]), Delivery(1, evs[1]), Delivery(2, evs[2]), Delivery(3, evs[2])]
    assert write(users, 0, batch).statuses == ["A", "A", "A", "D"]
    assert write(users, 0, batch).statuses == ["R", "o", "R", "r"]
