"""recstream's windowed counts computed with plain Faust windowed tables, for ``bench.stats_bench``.

Run as a subprocess (the parent builds the arguments)::

    python -m bench.faust_windowed --bootstrap H:P --topic T --app-id A --partitions P --expect N \\
        --expect-author M --windows '{"1h": "5m", ...}' --lateness-ms L --mode hopping \\
        --sample S.json --out R.json --datadir D [--profile F.prof] [--loglevel info]

(``--profile`` writes cProfile stats of the timed part; ``--loglevel info`` also prints progress.)

What a Faust user would write for "impressions and actions per user, user x category, item and author over
1h / 1d / 7d / 30d":

* **one windowed table per window** (``memory://`` store, a changelog topic each, as every Faust table),
  keyed ``"<kind>|<entity id>|<event type>"``; ``table[key] += 1`` per event and kind;
* ``--mode hopping`` (default): ``hopping(size=W, step=t)`` with ``t`` = recstream's tile size for that
  window (1h/5m, 1d/1h, 7d/1d, 30d/1d). The hopping window starting at ``E - W`` is exactly recstream's
  sliding window ``[E - W, E)`` at a tile-aligned query time ``E``, so the counts are comparable cell by
  cell. Each increment updates ``W / t`` window keys (12 + 24 + 7 + 30 = 73 per entity) and sends one
  changelog record per window key — that is what Faust hopping tables cost.
  ``--mode tumbling``: ``tumbling(W)`` — one key per entity and window, but it answers "this calendar
  bucket so far", not "the last W" (a different, cheaper question; offered as the lower bound).
* **event time**: windows are placed by the event's ``ts`` (ms → s), the same mechanism as
  ``relative_to_field`` (``field.getattr(event.value)``) through ``relative_to(callable)``, because the
  value is the :class:`filters.events.Event` struct decoded by :func:`filters.events.decode_event` (a
  registered Faust codec), not a ``faust.Record`` with a field descriptor;
* **expiry**: ``expires = W + lateness``, the retention of recstream's rings. Faust decides staleness by
  the *wall clock* (``window.stale(ts, time.time())``, notes §3.3), so the parent generates events whose
  timestamps end at "now"; with historical timestamps every window would be dropped at the first cleanup;
* **repartitioning**: user and user x category counts are made in the agent on the user-keyed source topic;
  each event is forwarded ``through`` two internal repartition topics keyed by ``item_id`` and
  ``author_id`` (``await topic.send``, what ``group_by`` does under the hood), whose agents count item and
  author — the same shape as recstream's by-item / by-author topics, so both sides do equivalent work and
  item / author counts are right with several partitions and several workers;
* agents iterate event by event (``async for ev in stream``): table writes need ``current_event()`` for
  their changelog partition, so ``take_events`` batching (what recstream uses) does not fit tables;
* **no dedup, no lateness rule, no replay guard**: a duplicate delivery counts twice, a replay after a
  crash counts again (``at_least_once``).

Measurement: ``first_ts`` when the first event is processed, ``last_ts`` when every agent has processed
everything it expects and the producer (changelog + repartition records) was flushed. Memory: peak RSS
(``ru_maxrss``), RSS at the first event (the baseline before any state), table keys, and a deep
``sys.getsizeof`` estimate of the table data plus Faust's per-partition expiry bookkeeping. Then the
counts of the sampled entities in the windows the parent asked for (``starts``) are dumped, the result JSON
is written and the process SIGTERMs itself.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import resource
import signal
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import faust
from faust.serializers import codecs

from filters.events import Event, decode_event, encode
from filters.tiles import parse_duration


class EventCodec(codecs.Codec):
    """Faust codec: the recstream event contract (msgspec JSON) in and out."""

    def _loads(self, s: bytes) -> Any:
        return decode_event(s)

    def _dumps(self, s: Any) -> bytes:
        return encode(s)


def table_key(kind: str, entity: str, action: str) -> str:
    """The table key of one entity and event type (``user_category`` entities are ``user|category``)."""
    return f"{kind}|{entity}|{action}"


def vm_rss_kb() -> int:
    """Current resident set size of this process in KiB (``/proc/self/status`` VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def deep_size(table: Any) -> int:
    """Approximate bytes held by a windowed table: its store dict, keys, window ranges, values and
    Faust's expiry bookkeeping (per-partition heaps of window ends and sets of keys per window end)."""
    seen: set[int] = set()

    def size(obj: object) -> int:
        if id(obj) in seen:
            return 0
        seen.add(id(obj))
        return sys.getsizeof(obj)

    def walk(objs: Iterable[Any]) -> int:
        total = 0
        for obj in objs:
            total += size(obj)
            if isinstance(obj, tuple | list | set | frozenset):
                total += walk(obj)
        return total

    store: dict[Any, Any] = table.data.data
    total = size(store) + walk(store.keys()) + walk(store.values())
    total += size(table._partition_timestamps)
    for heap in table._partition_timestamps.values():
        total += size(heap) + walk(heap)
    total += size(table._partition_timestamp_keys)
    for tk, keyset in table._partition_timestamp_keys.items():
        total += walk((tk,)) + size(keyset)  # the keys themselves are counted with the store
    return total


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--app-id", required=True)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--expect", type=int, required=True, help="events on the source topic")
    parser.add_argument("--expect-author", type=int, required=True, help="of which carry an author_id")
    parser.add_argument("--windows", required=True, help='JSON {"1h": "5m", ...}: window -> tile (step)')
    parser.add_argument("--lateness-ms", type=int, default=3_600_000)
    parser.add_argument("--mode", choices=("hopping", "tumbling"), default="hopping")
    parser.add_argument("--cleanup-interval", type=float, default=30.0)
    parser.add_argument("--sample", required=True, help='JSON {"entities": [[kind, id]], "starts": {w: ms}}')
    parser.add_argument("--out", required=True)
    parser.add_argument("--datadir", required=True)
    parser.add_argument("--profile", help="write cProfile stats of the timed part to this file")
    parser.add_argument("--loglevel", default="error")
    args = parser.parse_args(argv)
    profiler = cProfile.Profile() if args.profile else None

    codecs.register("recstream_event", EventCodec())
    app = faust.App(
        args.app_id,
        broker=f"kafka://{args.bootstrap}",
        store="memory://",
        datadir=args.datadir,
        topic_partitions=args.partitions,
        topic_replication_factor=1,
        table_standby_replicas=0,
        table_cleanup_interval=args.cleanup_interval,
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=1.0,
        stream_wait_empty=False,
        web_enabled=False,
        producer_compression_type="lz4",
    )
    ev_args: dict[str, Any] = {
        "key_type": bytes, "key_serializer": "raw", "value_serializer": "recstream_event",
    }
    source = app.topic(args.topic, **ev_args)
    by_item = app.topic(f"{args.app_id}-by-item", partitions=args.partitions, internal=True, **ev_args)
    by_author = app.topic(f"{args.app_id}-by-author", partitions=args.partitions, internal=True, **ev_args)

    current_ts = [0.0]  # event time (s) of the event being counted; read by the tables' relative_to

    def event_time(event: Any = None) -> float:
        return current_ts[0]

    windows: dict[str, tuple[int, int]] = {
        w: (parse_duration(w), parse_duration(t)) for w, t in json.loads(args.windows).items()
    }
    tables: dict[str, Any] = {}
    for name, (size_ms, step_ms) in windows.items():
        base = app.Table(f"stats-{name}", default=int, partitions=args.partitions)
        expires = (size_ms + args.lateness_ms) / 1000
        if args.mode == "hopping":
            wrapped = base.hopping(size_ms / 1000, step_ms / 1000, expires=expires)
        else:
            wrapped = base.tumbling(size_ms / 1000, expires=expires)
        tables[name] = wrapped.relative_to(event_time)  # type: ignore[attr-defined]  # not on WindowWrapperT
    counted = list(tables.values())

    state: dict[str, Any] = {"first": 0.0, "rss0": 0, "cpu0": 0.0, "done": False, "user": 0, "item": 0, "author": 0}

    def count(keys: Iterable[str], ts_ms: int) -> None:
        current_ts[0] = ts_ms / 1000
        for tbl in counted:
            for key in keys:
                tbl[key] += 1

    async def maybe_finish() -> None:
        if state["done"] or state["user"] < args.expect or state["item"] < args.expect:
            return
        if state["author"] < args.expect_author:
            return
        state["done"] = True
        await app.producer.flush()
        last = time.perf_counter()
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(args.profile)
        rusage = resource.getrusage(resource.RUSAGE_SELF)
        result = {
            "mode": args.mode,
            "first_ts": state["first"], "last_ts": last, "timed": args.expect - 1,
            "events": {"user": state["user"], "item": state["item"], "author": state["author"]},
            "rss_first_event_kb": state["rss0"], "rss_end_kb": vm_rss_kb(), "maxrss_kb": rusage.ru_maxrss,
            "cpu_s": rusage.ru_utime + rusage.ru_stime, "cpu_first_event_s": state["cpu0"],
            "tables": {name: {"keys": len(t.table.data.data), "bytes": deep_size(t.table)}
                       for name, t in tables.items()},
            "counts": dump_counts(tables, json.loads(Path(args.sample).read_text())),
        }
        Path(args.out).write_text(json.dumps(result))
        os.kill(os.getpid(), signal.SIGTERM)

    @app.agent(source, concurrency=1, name="users")
    async def users(stream: faust.StreamT[Event]) -> None:
        async for ev in stream:
            if not state["first"]:
                state["first"] = time.perf_counter()
                state["rss0"] = vm_rss_kb()
                ru = resource.getrusage(resource.RUSAGE_SELF)
                state["cpu0"] = ru.ru_utime + ru.ru_stime
                if profiler is not None:
                    profiler.enable()
            keys = [table_key("user", ev.user_id, ev.type)]
            if ev.category is not None:
                keys.append(table_key("user_category", f"{ev.user_id}|{ev.category}", ev.type))
            count(keys, ev.ts)
            await by_item.send(key=ev.item_id.encode(), value=ev)
            if ev.author_id is not None:
                await by_author.send(key=ev.author_id.encode(), value=ev)
            state["user"] += 1
            if args.loglevel != "error" and state["user"] % 500 == 0:
                print(f"{time.perf_counter() - state['first']:.1f} s: {state['user']} user, {state['item']} item, "
                      f"{state['author']} author", flush=True)
            await maybe_finish()

    def entity_agent(kind: str, attr: Callable[[Event], str | None]) -> Any:
        async def agent(stream: faust.StreamT[Event]) -> None:
            async for ev in stream:
                entity = attr(ev)
                if entity is not None:
                    count([table_key(kind, entity, ev.type)], ev.ts)
                state[kind] += 1
                await maybe_finish()
        return agent

    app.agent(by_item, concurrency=1, name="items")(entity_agent("item", lambda ev: ev.item_id))
    app.agent(by_author, concurrency=1, name="authors")(entity_agent("author", lambda ev: ev.author_id))

    faust.Worker(app, loglevel=args.loglevel, quiet=True).execute_from_commandline()


def dump_counts(tables: dict[str, Any], sample: dict[str, Any]) -> dict[str, dict[str, dict[str, dict[str, int]]]]:
    """``{kind: {entity: {window: {type: count}}}}`` of the sampled entities, read from the window of each
    table that starts at ``sample["starts"][window]`` (epoch ms)."""
    from filters.events import EVENT_TYPES

    out: dict[str, dict[str, dict[str, dict[str, int]]]] = {}
    for name, wrapper in tables.items():
        start_s = int(sample["starts"][name]) / 1000
        by_key = {key: value for (key, rng), value in wrapper.table.data.data.items() if rng[0] == start_s}
        for kind, entity in sample["entities"]:
            row = out.setdefault(kind, {}).setdefault(entity, {}).setdefault(name, {})
            for action in EVENT_TYPES:
                row[action] = int(by_key.get(table_key(kind, entity, action), 0))
    return out


if __name__ == "__main__":
    main()
