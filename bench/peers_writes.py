"""Peer 1 of :mod:`bench.peers_bench`: the same events written the naive way, command by command, and by
recstream's :class:`~stream.ingest.IngestStage` (join disabled: features only).

The naive writer is what glue code over plain Redis commands does per event: ``SETBIT`` × k + ``EXPIRE``
into one Bloom bitmap per user (sized for the whole retention), ``ZADD`` + ``ZREMRANGEBYRANK`` into the
same last-N sorted sets as ours (same keys and members, in its own database, so
:class:`~serving.sequences.SequenceReader` reads both), and ``HINCRBY`` + ``PEXPIRE`` per statistics
entity per tile size into one hash per time bucket. It neither dedups nor guards against replays, so
the events have no duplicate and no late delivery: then both sides must hold the same features
(:func:`compare`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import zip_longest
from typing import Any

import mmh3
import msgspec
import redis
from tqdm import tqdm

from bench.common import BAR
from bench.stats_reference import entities_of
from filters.bloom import optimal_bits, optimal_hashes
from filters.events import EVENT_TYPES, Event, encode_batch
from filters.sequences import encode_member, sequence_capacities
from filters.tiles import TileLayout
from infra.keys import KeyLayout
from infra.settings import MS_PER_DAY, Settings
from recstream.generate import GeneratorConfig, World, generate_events
from serving.exposure import ExposureReader
from serving.sequences import SequenceReader
from serving.stats import StatsReader
from stream.batching import KeyPartitioner
from stream.ingest import IngestStage, Record

NAIVE_DB = 1
AT = 1_767_225_600_000  # 2026-01-01T00:00Z: the events' span ends here, every read is at this time
EVENTS_PER_RECORD = 500  # producer.batch_max_events
RECORDS_PER_BATCH = 20  # records per IngestStage.process (a worker batch)
Command = tuple[Any, ...]


@dataclass(frozen=True)
class Workload:
    """Synthetic events (time order, unique ids, category and author filled) and the item catalogue."""

    events: list[Event]
    items: list[str]


def make_workload(n: int, seed: int = 3, days: float = 2.0) -> Workload:
    """About ``n`` events over ``days`` ending at :data:`AT`: no duplicate and no late delivery (the naive
    writer counts every delivery), category and author filled in from the item metadata."""
    cfg = GeneratorConfig(users=max(40, n // 50), items=max(1200, n // 20), days=days, events=n, seed=seed,
                          start_ms=AT - int(days * MS_PER_DAY), dup_share=0.0, late_share=0.0)
    world = World(cfg)
    events = []
    for ev in generate_events(cfg, world):
        meta = world.item_meta(int(ev.item_id[1:]))
        events.append(msgspec.structs.replace(ev, category=meta.category, author_id=meta.author_id))
    return Workload(events, [f"i{k}" for k in range(cfg.items)])


def db_client(client: redis.Redis, db: int) -> redis.Redis:
    """A client on database ``db`` of the same server."""
    kw = client.connection_pool.connection_kwargs
    return redis.Redis(host=kw["host"], port=kw["port"], username=kw.get("username"),
                       password=kw.get("password"), protocol=kw.get("protocol", 2), db=db)


def server_counters(client: redis.Redis) -> dict[str, float]:
    """Redis-wide counters: commands (``INFO commandstats``, commands run inside Lua included, ``INFO``
    excluded), script calls, CPU seconds (``INFO cpu``), network bytes in / out."""
    stats = client.info("commandstats")
    calls = {k.removeprefix("cmdstat_"): v["calls"] for k, v in stats.items()}
    cpu, net = client.info("cpu"), client.info("stats")
    return {"commands": sum(v for k, v in calls.items() if k != "info"),
            "script_calls": sum(v for k, v in calls.items() if k in ("eval", "evalsha", "fcall")),
            "cpu_s": cpu["used_cpu_sys"] + cpu["used_cpu_user"],
            "net_in": net["total_net_input_bytes"], "net_out": net["total_net_output_bytes"]}


def measured(client: redis.Redis, n: int, apply: Callable[[], None]) -> dict[str, float]:
    """Run ``apply`` (writing ``n`` events): events/s and the server counters' deltas per event."""
    before = server_counters(client)
    started = time.perf_counter()
    apply()
    wall = time.perf_counter() - started
    after = server_counters(client)
    return {"events_per_s": n / wall, "seconds": wall,
            "commands_per_event": (after["commands"] - before["commands"]) / n,
            "script_calls_per_event": (after["script_calls"] - before["script_calls"]) / n,
            "redis_cpu_us_per_event": (after["cpu_s"] - before["cpu_s"]) / n * 1e6,
            "net_in_bytes_per_event": (after["net_in"] - before["net_in"]) / n,
            "net_out_bytes_per_event": (after["net_out"] - before["net_out"]) / n}


def bucket_key(kind: str, entity: str, tile_ms: int, tile: int) -> str:
    """The naive hash of one entity's counts (field = event type) in one time bucket."""
    return f"nv:st:{kind}:{entity}:{tile_ms}:{tile}"


class NaiveWriter:
    """Per-event plain Redis commands (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        bloom = settings.bloom
        capacity = bloom.retention_days * 24 // bloom.slice_hours * bloom.slice_capacity
        self.m = optimal_bits(capacity, bloom.fpr)
        self.k = optimal_hashes(self.m, capacity)
        self.bloom_ttl_s = bloom.retention_days * 86_400
        self.keys = KeyLayout(settings.redis.shards)
        self.capacities = sequence_capacities(settings.lastn)
        self.layout = TileLayout.from_settings(settings.stats)

    def positions(self, item_id: str) -> list[int]:
        """The k bit positions of an item (mmh3 with seeds 0..k-1, as a hand-written filter does)."""
        return [mmh3.hash(item_id, seed, signed=False) % self.m for seed in range(self.k)]

    def commands(self, ev: Event) -> list[Command]:
        """The commands of one event."""
        out: list[Command] = []
        if ev.type == "impression":
            key = f"nv:bf:{ev.user_id}"
            out += [("SETBIT", key, p, 1) for p in self.positions(ev.item_id)]
            out.append(("EXPIRE", key, self.bloom_ttl_s))
        cap = self.capacities.get(ev.type)
        if cap:
            key = self.keys.sequence(ev.user_id, ev.type)
            member = encode_member(ev.event_id, ev.item_id, ev.category, ev.author_id)
            out += [("ZADD", key, ev.ts, member), ("ZREMRANGEBYRANK", key, 0, -cap - 1)]
        for kind, entity in entities_of(ev).items():
            for ring in self.layout.rings:
                key = bucket_key(kind, entity, ring.tile_ms, ev.ts // ring.tile_ms)
                out += [("HINCRBY", key, ev.type, 1), ("PEXPIRE", key, ring.tile_ms * ring.slots)]
        return out

    def write(self, client: redis.Redis, events: Sequence[Event], mode: str) -> None:
        """Apply ``events``: ``command`` (one round trip per command), ``event`` (one pipeline per event)
        or ``batch`` (one pipeline per :data:`EVENTS_PER_RECORD` events)."""
        if mode == "command":
            for ev in events:
                for cmd in self.commands(ev):
                    client.execute_command(*cmd)  # type: ignore[no-untyped-call]
            return
        size = 1 if mode == "event" else EVENTS_PER_RECORD
        for k in range(0, len(events), size):
            pipe = client.pipeline(transaction=False)
            for ev in events[k:k + size]:
                for cmd in self.commands(ev):
                    pipe.execute_command(*cmd)  # type: ignore[no-untyped-call]
            pipe.execute()

    def seen(self, client: redis.Redis, user_id: str, items: Sequence[str]) -> list[bool]:
        """Naive membership: every bit of the item set (one pipeline of GETBITs)."""
        pipe = client.pipeline(transaction=False)
        for item in items:
            for p in self.positions(item):
                pipe.getbit(f"nv:bf:{user_id}", p)
        bits = pipe.execute()
        return [all(bits[i * self.k:(i + 1) * self.k]) for i in range(len(items))]


def records_of(events: Sequence[Event], settings: Settings) -> list[Record]:
    """The events as the producer batches them: per partition (murmur2 of the user), records of up to
    :data:`EVENTS_PER_RECORD` events, partitions interleaved record by record."""
    place, parts = KeyPartitioner(settings.kafka.partitions), dict[int, list[Event]]()
    for ev in events:
        parts.setdefault(place(ev.user_id), []).append(ev)
    per_part = [[Record(settings.kafka.events_topic, p, k // EVENTS_PER_RECORD, None,
                        encode_batch(evs[k:k + EVENTS_PER_RECORD]))
                 for k in range(0, len(evs), EVENTS_PER_RECORD)] for p, evs in sorted(parts.items())]
    return [rec for row in zip_longest(*per_part) for rec in row if rec is not None]


def write_ours(stage: IngestStage, records: Sequence[Record]) -> None:
    """Apply the records through the stage, :data:`RECORDS_PER_BATCH` at a time, committing each batch."""
    for k in range(0, len(records), RECORDS_PER_BATCH):
        stage.process(records[k:k + RECORDS_PER_BATCH]).commit()


def _write_one(client: redis.Redis, settings: Settings, events: Sequence[Event], path: str) -> dict[str, float]:
    """Flush, then write ``events`` along ``path`` (``recstream`` or ``naive-<mode>``), measured."""
    if path == "recstream":
        client.flushdb()
        stage = IngestStage(client, settings, clock=lambda: AT)  # outside the timing: scripts, numba warm-up
        records = records_of(events, settings)
        return measured(client, len(events), lambda: write_ours(stage, records))
    naive, target = NaiveWriter(settings), db_client(client, NAIVE_DB)
    target.flushdb()
    return measured(client, len(events), lambda: naive.write(target, events, path.removeprefix("naive-")))


WRITE_PATHS = ("recstream", "naive-batch", "naive-event", "naive-command")


def run_writes(client: redis.Redis, settings: Settings, events: Sequence[Event], rounds: int,
               paths: Sequence[str] = WRITE_PATHS,
               command_events: int | None = None) -> dict[str, list[dict[str, float]]]:
    """Every path ``rounds`` times, interleaved (the order rotates each round); ``naive-command`` writes only
    the first ``command_events`` events (it is slow). The last round leaves recstream's features in
    database 0 and the batched naive path's in :data:`NAIVE_DB`."""
    out: dict[str, list[dict[str, float]]] = {p: [] for p in paths}
    bar = tqdm(total=rounds * len(paths), desc="writes", **BAR)
    for r in range(rounds):
        order = list(paths[r % len(paths):]) + list(paths[:r % len(paths)])
        if r == rounds - 1:  # finish with recstream, then the batched naive path: both left for compare()
            last = ("recstream", "naive-batch")
            order = [p for p in order if p not in last] + [p for p in last if p in paths]
        for path in order:
            part = events[:command_events] if path == "naive-command" else events
            out[path].append(_write_one(client, settings, part, path))
            bar.update()
    bar.close()
    return out


def naive_counts(client: redis.Redis, layout: TileLayout, kind: str, entities: Sequence[str],
                 at: int) -> list[list[list[int]]]:
    """Per entity, per window of ``layout``, the counts of every event type from the naive buckets."""
    pipe = client.pipeline(transaction=False)
    for entity in entities:
        for w in layout.windows:
            for tile in w.tile_range(at):
                pipe.hgetall(bucket_key(kind, entity, w.tile_ms, tile))
    replies = iter(pipe.execute())
    out = []
    for _ in entities:
        per_window = []
        for w in layout.windows:
            counts = [0] * len(EVENT_TYPES)
            for _tile in w.tile_range(at):
                for field, value in next(replies).items():
                    counts[EVENT_TYPES.index(field.decode())] += int(value)
            per_window.append(counts)
        out.append(per_window)
    return out


def _stats_equal(client: redis.Redis, naive: redis.Redis, settings: Settings, events: Sequence[Event],
                 limit: int) -> tuple[int, int]:
    stats = StatsReader(client, settings)
    layout, equal, total = stats.layout, 0, 0
    for kind in ("user", "user_category", "item", "author"):
        names = sorted({entities_of(ev)[kind] for ev in events if kind in entities_of(ev)})[:limit]
        ids: list[Any] = [tuple(n.split("|", 1)) for n in names] if kind == "user_category" else names
        ours = stats.stats_multi(kind, ids, actions=EVENT_TYPES, at=AT).values[..., :len(EVENT_TYPES)]
        theirs = naive_counts(naive, layout, kind, names, AT)
        for i in range(len(names)):
            for w in range(len(layout.windows)):
                total += len(EVENT_TYPES)
                equal += sum(int(a) == b for a, b in zip(ours[i, w].tolist(), theirs[i][w], strict=True))
    return equal, total


def compare(client: redis.Redis, settings: Settings, events: Sequence[Event], limit: int = 10**9) -> dict[str, Any]:
    """recstream's features (database 0) against the naive writer's (:data:`NAIVE_DB`) for the same events:
    last-N of every action of the first ``limit`` users, every windowed count of the first ``limit``
    entities of each kind, and exposure of every impression of those users (``[equal, compared]``)."""
    naive = db_client(client, NAIVE_DB)
    users = sorted({ev.user_id for ev in events})[:limit]
    caps = dict.fromkeys(sequence_capacities(settings.lastn), 10**5)
    ours_seq, naive_seq = SequenceReader(client, settings), SequenceReader(naive, settings)
    last_n = sum(ours_seq.last_n_multi(u, caps) == naive_seq.last_n_multi(u, caps) for u in users)
    writer, exposure = NaiveWriter(settings), ExposureReader(client, settings, clock=lambda: AT)
    shown, both = 0, 0
    for u in users:
        items = [ev.item_id for ev in events if ev.user_id == u and ev.type == "impression"]
        if items:
            shown += len(items)
            both += sum(a and b for a, b in zip(exposure.seen(u, items, AT), writer.seen(naive, u, items),
                                                strict=True))
    entries = sum(len(e) for u in users for e in ours_seq.last_n_multi(u, caps).values())
    return {"last_n_users": [last_n, len(users)], "last_n_entries": entries,
            "stats_cells": list(_stats_equal(client, naive, settings, events, limit)),
            "exposure_seen_by_both": [both, shown]}
