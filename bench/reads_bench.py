"""Serving-read latency of last-N sequences and windowed statistics against a real Redis.

Run ``python -m bench.reads_bench`` (starts its own redis-server on a free port in a temp dir) or
``python -m bench.reads_bench --redis-url redis://127.0.0.1:6379/15`` (uses that database and FLUSHES
it). The data is written through the real writers: one SIM-size click sequence (2,000 entries, 10
categories), a few users, and 1,000 items with 30 days of events. Measured, one call at a time on one
connection: ``last_n`` n=50 / n=1,000 / n=50 with a category filter, ``last_n_multi`` over the 5 actions,
``stats_multi`` for 1,000 items x 4 windows x 5 actions (plus its MGET alone and ``to_dicts``), and
a 500-event user write batch. Writes ``bench/results/reads.json`` and ``reads.md``.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from bench.common import percentiles, private_redis, write_results
from filters.events import ACTIONS, EVENT_TYPES, Event, ItemMeta, encode, encode_batch
from filters.tiles import TileLayout
from infra import keys
from infra.keys import KeyLayout
from infra.settings import Settings
from serving.sequences import SequenceReader
from serving.stats import StatsReader
from stream.batching import KeyPartitioner
from stream.ingest import IngestStage, ItemMetaStage, Record

D = 86_400_000
NOW = 1_767_225_600_000  # 2026-01-01T00:00Z
CATEGORIES = [f"cat{k}" for k in range(10)]


def timed(fn: Callable[[], Any], iterations: int, warmup: int = 20) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(iterations):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return percentiles(samples)


def populate(client: redis.Redis, settings: Settings, rng: random.Random) -> list[str]:
    """Items' metadata (10 categories) and events through the real stages: user "sim" with 2,000 clicks,
    "u1" / "u2" with 300 mixed actions, and 100,000 events on 1,000 items; returns the item ids."""
    items = [f"i{k}" for k in range(1000)]
    topic = settings.kafka.items_topic
    metas = [Record(topic, 0, k, i.encode(), encode(ItemMeta(item_id=i, category=rng.choice(CATEGORIES),
                                                              author_id=f"a{rng.randrange(50)}")))
             for k, i in enumerate(items)]
    ItemMetaStage(client, settings).process(metas).commit()
    kinds: list[Any] = list(ACTIONS)
    events = []
    for user, n in (("sim", 2_000), ("u1", 300), ("u2", 300)):
        for k in range(n):
            events.append(Event(event_id=f"{user}-{k}", type="click" if user == "sim" else rng.choice(kinds),
                                user_id=user, item_id=rng.choice(items), ts=NOW - rng.randrange(60 * D)))
    weighted: list[Any] = list(EVENT_TYPES)
    events += [Event(event_id=f"x{k}", type=rng.choices(weighted, weights=[20, 3, 1, 1, 1, 1])[0], user_id=f"v{k % 97}",
                     item_id=rng.choice(items), ts=NOW - rng.randrange(31 * D)) for k in range(100_000)]
    events.sort(key=lambda e: e.ts)
    place, parts = KeyPartitioner(settings.kafka.partitions), dict[int, list[Event]]()
    for e in events:
        parts.setdefault(place(e.user_id), []).append(e)
    stage = IngestStage(client, settings, clock=lambda: NOW)
    for p, evs in parts.items():
        for n, k in enumerate(range(0, len(evs), 5000)):  # offsets in order, no gaps (the worker's gap check)
            stage.process([Record(settings.kafka.events_topic, p, n, None, encode_batch(evs[k:k + 5000]))]).commit()
    return items


def run(client: redis.Redis, settings: Settings, iterations: int) -> dict[str, Any]:
    rng = random.Random(7)
    load_before = os.getloadavg()[0]
    client.flushdb()
    t0 = time.perf_counter()
    items = populate(client, settings, rng)
    populate_s = time.perf_counter() - t0
    seqs, stats = SequenceReader(client, settings), StatsReader(client, settings)
    layout = TileLayout.from_settings(settings.stats)
    assert len(seqs.last_n("sim", "click", 1000)) == 1000
    results: dict[str, Any] = {}
    results["last_n n=50"] = timed(lambda: seqs.last_n("sim", "click", 50), iterations)
    results["last_n n=1000"] = timed(lambda: seqs.last_n("sim", "click", 1000), iterations // 4)
    results["last_n n=50 category (1 in 10)"] = timed(
        lambda: seqs.last_n("sim", "click", 50, category="cat3"), iterations)
    results["last_n n=50 category (absent, full scan of 2,000)"] = timed(
        lambda: seqs.last_n("sim", "click", 50, category="nope"), iterations // 4)
    results["last_n_multi 5 actions x 50"] = timed(
        lambda: seqs.last_n_multi("u1", dict.fromkeys(ACTIONS, 50)), iterations)
    stats_keys = [KeyLayout(settings.redis.shards).stats("item", i) for i in items]
    windows = [w.name for w in layout.windows]
    results["stats_multi 1000 items x 4 windows x 5 actions"] = timed(
        lambda: stats.stats_multi("item", items, windows, ACTIONS, at=NOW), iterations // 2)
    results["  of which MGET alone"] = timed(lambda: client.mget(stats_keys), iterations // 2)
    blobs: list[Any] = client.mget(stats_keys)
    results["  of which decode + window sums + features"] = timed(
        lambda: stats.compute(blobs, items, windows, ACTIONS, at=NOW), iterations // 2)
    matrix = stats.stats_multi("item", items, windows, ACTIONS, at=NOW)
    results["StatsMatrix.to_dicts (1000 dicts of dicts)"] = timed(matrix.to_dicts, iterations // 4)
    results["stats 1 user (all windows, all types)"] = timed(
        lambda: stats.stats("user", "u1", at=NOW), iterations)
    stage = IngestStage(client, settings, clock=lambda: NOW)
    clock_key = keys.watermark(settings.worker.app_id, settings.kafka.events_topic, 0)
    counter = iter(range(int(client.hget(clock_key, "next") or 0), 10**9))  # partition 0's next offsets
    kinds: list[Any] = list(EVENT_TYPES)

    def write_batch() -> None:
        base = next(counter)
        batch = [Event(event_id=f"w{base}-{k}", type=rng.choice(kinds), user_id=f"w{rng.randrange(200)}",
                       item_id="i1", ts=NOW - rng.randrange(D)) for k in range(500)]
        stage.process([Record(settings.kafka.events_topic, 0, base, None, encode_batch(batch))]).commit()

    results["ingest batch (500 events, 200 users, every family)"] = timed(write_batch, 50, warmup=3)
    return {"latency": results, "blob_bytes": layout.nbytes, "populate_s": round(populate_s, 2),
            "items": len(items), "iterations": iterations,
            "loadavg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default="", help="use this Redis database (it is FLUSHED)")
    parser.add_argument("--iterations", type=int, default=2_000)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {"lastn": {"capacity": {"click": 2_000, "like": 100, "collect": 100,
                                                         "share": 50, "comment": 50}},
                                 "join": {"enabled": False}}  # reads only: no samples topic needed
    with private_redis(args.redis_url, **overrides) as (client, settings):
        out = run(client, settings, args.iterations)
    table = [["operation", "p50 µs", "p99 µs", "mean µs"]]
    for name, p in out["latency"].items():
        table.append([name, f"{p['p50_us']:.0f}", f"{p['p99_us']:.0f}", f"{p['mean_us']:.0f}"])
    before, after = out["loadavg_1m"]
    table.append([f"(machine load average 1m before / after: {before} / {after})", "", "", ""])
    path = write_results(args.out, "reads", out, table)
    print(path.read_text())


if __name__ == "__main__":
    main()
