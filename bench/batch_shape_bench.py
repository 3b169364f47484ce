"""``recstream bench batch-shape``: the ingest stage's cost per event as a function of the batch's shape.

Live traffic and a backlog drain hand the worker differently shaped batches: paced live traffic arrives as
records of a few events (the producer's linger) and batches of a few thousand events (``take_events``'s
``within``), while a backlog drain takes full records of hundreds of events, batches of ~100k events, where
every user and item recurs many times. The write path pre-aggregates per entity (tiles, Bloom bitmaps,
sequences, join checkpoints), so its cost follows the entities a batch touches, not only its events.

This runs :class:`~stream.ingest.IngestStage` in-process (no Faust: the framework's per-record cost is
left out on purpose) against a private Redis and Kafka (the join's samples go to the real samples topic),
on live-like events (2,000 users, 5,000 items, stamped with the wall clock), for each shape
``(events per record, events per batch)``; per shape: events/s, ms per batch, and the Redis time per event
(``INFO commandstats``, reset per shape), the scripts' part of it.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from bench.common import private_services, write_results
from filters.events import Event, encode
from infra.gc_tuning import tune_gc
from infra.redis_client import connect
from infra.settings import Settings
from infra.topics import ensure_topics
from recstream.generate import GeneratorConfig, World, generate_events
from stream.batching import BatchRecord, KeyPartitioner, PartitionBatcher
from stream.ingest import IngestStage, Record

__all__ = ["pack_records", "run_shape"]

SHAPES = ((10, 2_000), (10, 5_000), (10, 20_000), (10, 50_000), (200, 100_000))


def pack_records(events: Iterable[Event], per_record: int, partitions: int, topic: str,
                 now_ms: int) -> list[Record]:
    """Events as the producer batches them (:class:`~stream.batching.PartitionBatcher`, murmur2 placement),
    ``per_record`` events per record and no linger, as consumed records (offsets from 0 per partition).

    >>> evs = [Event(event_id=str(k), type="click", user_id="u1", item_id="i", ts=k) for k in range(5)]
    >>> [(r.offset, r.value.count(b"event_id")) for r in pack_records(evs, 2, 4, "t", 0)]
    [(0, 2), (1, 2), (2, 1)]
    """
    place, batcher = KeyPartitioner(partitions), PartitionBatcher(per_record, 960 * 1024, float("inf"))
    batched: list[BatchRecord] = []
    for event in events:
        batched += batcher.add(place(event.user_id), event.user_id.encode(), encode(event))
    offsets: dict[int, int] = {}
    out = []
    for b in [*batched, *batcher.drain()]:
        offset = offsets[b.partition] = offsets.get(b.partition, -1) + 1
        out.append(Record(topic, b.partition, offset, b.key, b.value, now_ms))
    return out


def _redis_us(info: dict[str, Any]) -> tuple[float, float]:
    """(every command's µs, EVALSHA's µs) of ``INFO commandstats`` (nested script commands count in both)."""
    total = sum(v["usec"] for k, v in info.items() if k.startswith("cmdstat_"))
    return float(total), float(info.get("cmdstat_evalsha", {}).get("usec", 0))


def run_shape(settings: Settings, events: Sequence[Event], per_record: int, batch_events: int) -> dict[str, Any]:
    """Apply ``events`` through a fresh :class:`IngestStage` in batches of the given shape (fresh Redis)."""
    client = connect(settings.redis.effective_url)
    client.flushall()
    stage = IngestStage(client, settings)
    records = pack_records(events, per_record, settings.kafka.partitions, settings.kafka.events_topic,
                           int(time.time() * 1000))
    per_batch = max(1, batch_events // per_record)
    client.config_resetstat()
    started, cpu = time.perf_counter(), time.process_time()
    for k in range(0, len(records), per_batch):
        out = stage.process(records[k:k + per_batch])
        out.commit()
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    total_us, script_us = _redis_us(client.info("commandstats"))
    n, batches = len(records) * per_record, -(-len(records) // per_batch)
    return {"events_per_record": per_record, "events_per_batch": batch_events, "events": n,
            "events_per_s": n / wall, "ms_per_batch": wall / batches * 1000, "stage_cpu_us_per_event":
            cpu / n * 1e6, "redis_us_per_event": total_us / n, "scripts_us_per_event": script_us / n}


def _table(rows: list[dict[str, Any]]) -> list[list[str]]:
    table = [["events per record", "events per batch", "events/s", "ms per batch", "stage CPU µs/event",
              "Redis µs/event (scripts)"]]
    for r in rows:
        table.append([str(r["events_per_record"]), f"{r['events_per_batch']:,}", f"{r['events_per_s']:,.0f}",
                      f"{r['ms_per_batch']:,.0f}", f"{r['stage_cpu_us_per_event']:.0f}",
                      f"{r['redis_us_per_event']:.0f} ({r['scripts_us_per_event']:.0f})"])
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="recstream bench batch-shape", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=120_000, help="live-like events applied per shape")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    with private_services() as settings:
        ensure_topics(settings)
        world = World(GeneratorConfig(users=2_000, items=5_000, seed=5))
        cfg = GeneratorConfig(users=2_000, items=5_000, days=args.events / 4_000 / 86_400, events=args.events,
                              seed=8, start_ms=int(time.time() * 1000), dup_share=0.0, late_share=0.0)
        events = list(generate_events(cfg, world))
        tune_gc(settings.worker.gc_young)  # as the worker does (and the events stay out of every GC pass)
        rows = []
        for per_record, batch_events in SHAPES:
            rows.append(run_shape(settings, events, per_record, batch_events))
            print(" | ".join(_table(rows)[-1]), flush=True)
    print(write_results(args.out, "batch_shape", {"shapes": rows}, _table(rows)).read_text())


if __name__ == "__main__":
    main()
