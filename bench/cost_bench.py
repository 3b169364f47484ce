"""``recstream bench cost``: Redis bytes per user and per item, and CPU per event, as the deployment grows.

The real write path, in process: :class:`stream.ingest.IngestStage` (exposure filters, last-N, user and
user x category tiles, item and author tiles, dedup, replay guards, event-time clocks, the label join
with its Redis checkpoint; samples go to a counting sink instead of Kafka) and
:class:`stream.ingest.ItemMetaStage` for the catalogue's metadata, against a private redis-server
(:func:`bench.common.private_redis`), fed batched records of :mod:`bench.cost_events` activity.

Sweeps (each on an emptied Redis):

1. **users** — cohorts of ``--per-partition`` users on source partitions 0, 1, 2, …: users are added
   partition by partition (each partition has its own event-time clock) and Redis is measured after
   each checkpoint of ``--users``; ``--user-days`` days of history each (default 1: a full history of
   300k users does not fit the time budget — the steady state per user comes from sweep 3).
2. **items** — a cohort of ``--item-users`` users, catalogues of ``--items`` items (per-item bytes).
3. **retention** — ``--fixed-users`` users with a full history of R days, ``bloom.retention_days = R`` and a
   longest window of ``Rd`` (1d tiles).
4. **last-N** — the same users, 30 days of history, every action's ``lastn.capacity`` = N.

Measured per checkpoint: ``INFO memory used_memory`` delta; ``MEMORY USAGE … SAMPLES 0`` of every key of a
random sample of ``--sample`` users (by construction: tiles, user x category tiles, the Bloom index and the
sub-slices it lists, the sequences), scaled to all users, plus every shared key (dedup, label-join state,
guards, clocks, item / author tiles, item metadata), enumerated; CPU per event = this process's
``time.process_time`` (both of its threads) + Redis ``used_cpu_user + used_cpu_sys``, both only around
``process()`` and the batch's commit, divided by the events of that checkpoint.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import redis
from tqdm import tqdm

from bench.common import BAR, private_redis, with_sections
from bench.cost_events import Activity, Catalogue, Cohort, batches, records_of, users_by_partition
from bench.stats_bench import _redis_cpu_s as redis_cpu_s
from filters.events import ItemMeta, encode
from filters.labels import Sample
from filters.sequences import sequence_capacities
from infra.keys import ENTITY_KINDS, KeyLayout, watermark
from infra.settings import MS_PER_DAY, Settings
from stream.ingest import IngestStage, ItemMetaStage, Record

MEMORY_BUDGET = 3_500_000_000
"""A checkpoint whose projected ``used_memory`` exceeds this is skipped (the machine's rule: well under 4 GB)."""
USER_FAMILIES = ("user tiles", "user x category tiles", "Bloom filters", "last-N sequences")
SHARED_FAMILIES = ("dedup", "label-join state", "replay guards", "clocks", "item tiles", "author tiles",
                   "item metadata")
ITEM_FAMILIES = ("item tiles", "author tiles", "item metadata")


class CountingSink:
    """The label join's samples, counted (the Kafka producer is not what is measured here)."""

    def __init__(self) -> None:
        self.samples = 0

    def send(self, samples: Sequence[Sample]) -> None:
        self.samples += len(samples)

    def flush(self) -> None:
        return None


@dataclass(frozen=True)
class Case:
    """One run on an emptied Redis: cohorts of ``per_partition`` users added at ``checkpoints``
    (cumulative partition counts), ``days`` of history each."""

    per_partition: int
    checkpoints: tuple[int, ...]
    days: int
    items: int
    activity: Activity = field(default_factory=Activity)
    sample: int = 300
    events_per_batch: int = 20_000
    seed: int = 1


@dataclass
class Meter:
    """CPU and event counts of the write path (only around ``process()`` + commit)."""

    events: int = 0
    records: int = 0
    py_cpu_s: float = 0.0
    redis_cpu_s: float = 0.0
    wall_s: float = 0.0

    def minus(self, other: Meter) -> Meter:
        return Meter(*(getattr(self, f) - getattr(other, f) for f in ("events", "records", "py_cpu_s",
                                                                      "redis_cpu_s", "wall_s")))


def _apply(stage: IngestStage, client: redis.Redis, records: Sequence[Record], meter: Meter) -> None:
    py0, r0, w0 = time.process_time(), redis_cpu_s(client), time.perf_counter()
    out = stage.process(records)
    out.commit()
    meter.py_cpu_s += time.process_time() - py0
    meter.redis_cpu_s += redis_cpu_s(client) - r0
    meter.wall_s += time.perf_counter() - w0
    meter.records += len(records)
    if out.dead_letters:
        first = out.dead_letters[0]
        msg = f"cost bench: {len(out.dead_letters)} dead letters, first: {first.reason} {first.detail}"
        raise RuntimeError(msg)


def write_catalogue(client: redis.Redis, settings: Settings, catalogue: Catalogue) -> None:
    """Every item's metadata through :class:`ItemMetaStage` (partition 0 of the items topic)."""
    stage, topic, cat = ItemMetaStage(client, settings), settings.kafka.items_topic, catalogue
    metas = [encode(ItemMeta(item_id=cat.item_ids[k], category=cat.categories[cat.item_cat[k]],
                             author_id=cat.author_ids[k], publish_ts=0)) for k in range(cat.items)]
    for start in range(0, cat.items, 5_000):
        stage.process([Record(topic, 0, k, cat.item_ids[k].encode(), metas[k])
                       for k in range(start, min(start + 5_000, cat.items))])


def write_cohort(stage: IngestStage, client: redis.Redis, settings: Settings, cohort: Cohort, partition: int,
                 case: Case, meter: Meter) -> None:
    """``case.days`` days of the cohort's events, day by day, in batches, ending at the last midnight UTC."""
    end = int(time.time() * 1000) // MS_PER_DAY * MS_PER_DAY
    offset = 0
    for day in range(case.days):
        events = cohort.day(day, end - (case.days - day) * MS_PER_DAY)
        records = records_of(events, settings.kafka.events_topic, partition, offset)
        offset += len(records)
        meter.events += len(events)
        for batch in batches(records, case.events_per_batch):
            _apply(stage, client, batch, meter)


def _memory(client: redis.Redis, keys: Sequence[str]) -> list[int]:
    """``MEMORY USAGE key SAMPLES 0`` of each key (0 = absent), pipelined."""
    out: list[int] = []
    for k in range(0, len(keys), 5_000):
        pipe = client.pipeline(transaction=False)
        for key in keys[k : k + 5_000]:
            pipe.memory_usage(key, samples=0)
        out += [int(v or 0) for v in pipe.execute()]
    return out


def user_keys(client: redis.Redis, settings: Settings, user: str, categories: Sequence[str]) -> dict[str, list[str]]:
    """Every key of one user by family (the Bloom sub-slices from the slice counts in its index)."""
    keys, version = KeyLayout(settings.redis.shards), settings.bloom.hash_version
    index = keys.bloom_index(user, version)
    slices: dict[bytes, bytes] = client.hgetall(index)  # type: ignore[assignment]
    prefix = keys.slice_key_prefix(user, version)
    bloom = [index] + [f"{prefix}{start.decode()}:{sub}" for start, n in slices.items() if start.isdigit()
                       for sub in range(int(n))]
    return {
        "user tiles": [keys.stats("user", user)],
        "user x category tiles": [keys.stats("user_category", (user, c)) for c in categories],
        "Bloom filters": bloom,
        "last-N sequences": [keys.sequence(user, a) for a in sequence_capacities(settings.lastn)],
    }


def shared_keys(settings: Settings, catalogue: Catalogue, partitions: int) -> dict[str, list[str]]:
    """Every key that is not one user's: per shard and partition, per item and author, the clocks."""
    keys, shards = KeyLayout(settings.redis.shards), settings.redis.shards
    authors = sorted(set(catalogue.author_ids))
    return {
        "dedup": [k for s in range(shards) for p in range(partitions) for k in (keys.dedup(s, p),
                                                                               keys.dedup_times(s, p))],
        "label-join state": [keys.join_state(s, p) for s in range(shards) for p in range(partitions)],
        "replay guards": [keys.applied(kind, s) for kind in ENTITY_KINDS[:3] for s in range(shards)],
        "clocks": [watermark(settings.worker.app_id, t, p) for t in (settings.kafka.events_topic,
                                                                     settings.kafka.items_topic)
                   for p in range(partitions)],
        "item tiles": [keys.stats("item", i) for i in catalogue.item_ids],
        "author tiles": [keys.stats("author", a) for a in authors],
        "item metadata": [keys.item_meta(i) for i in catalogue.item_ids],
    }


def families(client: redis.Redis, settings: Settings, catalogue: Catalogue, users: Sequence[str],
             partitions: int, sample: int, seed: int) -> dict[str, dict[str, float]]:
    """``{family: {"keys", "bytes"}}``: sampled users' families scaled to ``len(users)``, shared ones counted."""
    picked = random.Random(seed).sample(list(users), min(sample, len(users)))
    scale = len(users) / len(picked)
    out: dict[str, dict[str, float]] = {}
    for name, names in shared_keys(settings, catalogue, partitions).items():
        used = _memory(client, names)
        out[name] = {"keys": sum(1 for u in used if u), "bytes": sum(used)}
    per_user = [user_keys(client, settings, u, catalogue.categories) for u in picked]
    for name in USER_FAMILIES:
        used = _memory(client, [k for fam in per_user for k in fam[name]])
        out[name] = {"keys": sum(1 for u in used if u) * scale, "bytes": sum(used) * scale}
    out["_users_with_tiles"] = {"keys": float(sum(
        1 for n in _memory(client, [keys["user tiles"][0] for keys in per_user]) if n)), "bytes": float(len(picked))}
    return out


def _snapshot(client: redis.Redis, settings: Settings, case: Case, catalogue: Catalogue, users: list[str],
              partitions: int, used0: int, meter: Meter, sink: CountingSink, events: int) -> dict[str, Any]:
    """One checkpoint: memory of everything written (``events`` so far), CPU of ``meter`` (the last cohorts)."""
    used = int(client.info("memory")["used_memory"])
    fam = families(client, settings, catalogue, users, partitions, case.sample, case.seed)
    found = fam.pop("_users_with_tiles")
    delta = used - used0
    item_bytes = sum(fam[f]["bytes"] for f in ITEM_FAMILIES)
    ev = max(1, meter.events)
    return {
        "users": len(users), "partitions": partitions, "days": case.days, "items": case.items,
        "items_with_tiles": fam["item tiles"]["keys"], "events": events, "cpu_events": meter.events,
        "samples": sink.samples,
        "used_memory": used, "used_memory_delta": delta, "families": fam,
        "family_bytes_sum": sum(f["bytes"] for f in fam.values()), "item_side_bytes": item_bytes,
        "sampled_users": int(found["bytes"]), "sampled_users_found": int(found["keys"]),
        "py_cpu_us_per_event": meter.py_cpu_s / ev * 1e6, "redis_cpu_us_per_event": meter.redis_cpu_s / ev * 1e6,
        "cpu_us_per_event": (meter.py_cpu_s + meter.redis_cpu_s) / ev * 1e6,
        "events_per_s": meter.events / max(meter.wall_s, 1e-9), "wall_s": meter.wall_s,
    }


def empty(client: redis.Redis) -> None:
    """FLUSHALL in the background (a synchronous one of GBs outlasts the client's socket timeout), then wait
    until Redis freed it all."""
    client.flushall(asynchronous=True)
    while int(client.info("memory")["lazyfree_pending_objects"]):
        time.sleep(0.2)


def run_case(client: redis.Redis, settings: Settings, case: Case, label: str = "") -> list[dict[str, Any]]:
    """Empty Redis, write the catalogue, add cohorts; one measurement per checkpoint (CPU of its cohorts)."""
    partitions = max(case.checkpoints)
    settings = with_sections(settings, kafka={"partitions": partitions})
    empty(client)
    used0 = int(client.info("memory")["used_memory"])
    catalogue = Catalogue(case.items, seed=case.seed)
    write_catalogue(client, settings, catalogue)
    pinned = users_by_partition(partitions, case.per_partition, range(partitions))
    sink = CountingSink()
    stage = IngestStage(client, settings, samples=sink)
    rows: list[dict[str, Any]] = []
    meter, users, done = Meter(), [], 0
    for checkpoint in case.checkpoints:
        if rows and rows[-1]["used_memory_delta"] / done * checkpoint > MEMORY_BUDGET:
            rows.append({"users": checkpoint * case.per_partition, "skipped": "projected used_memory over "
                         f"{MEMORY_BUDGET / 1e9:.1f} GB"})
            break
        before = replace(meter)
        for p in tqdm(range(done, checkpoint), desc=f"cost {label} partitions", **BAR):
            cohort = Cohort(pinned[p], catalogue, case.activity, seed=case.seed * 100_003 + p)
            write_cohort(stage, client, settings, cohort, p, case, meter)
            users += pinned[p]
        done = checkpoint
        rows.append(_snapshot(client, settings, case, catalogue, users, done, used0, meter.minus(before), sink,
                              meter.events))
    return rows


def retention_settings(settings: Settings, days: int) -> Settings:
    """Bloom retention and the longest statistics window = ``days`` (1d tiles); the too-old cut past both."""
    windows = {"1h": "5m", "1d": "1h", "7d": "1d"} | ({f"{days}d": "1d"} if days > 7 else {})
    return with_sections(settings, bloom={"retention_days": days}, stats={"windows": windows},
                         worker={"max_age_ms": (max(days, 30) + 1) * MS_PER_DAY})


def capacity_settings(settings: Settings, n: int) -> Settings:
    """Every action's last-N capacity = ``n``."""
    return with_sections(settings, lastn={"capacity": {a: n for a in settings.lastn.capacity}})


def _keep(out: dict[str, Any], args: argparse.Namespace) -> None:
    """The sweeps done so far, as ``<out>/cost.json`` (replaced by the full results at the end)."""
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cost.json").write_text(json.dumps({"partial": True, **out}, indent=2) + "\n")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The four sweeps; returns the results dict (see :mod:`bench.cost_report`)."""
    t0 = time.perf_counter()
    per, fixed = args.per_partition, args.fixed_users
    checkpoints = tuple(u // per for u in args.users)
    out: dict[str, Any] = {"activity": Activity().describe()}
    with private_redis() as (client, settings):
        print(f"cost bench: users {args.users} ({args.user_days} d), items {args.items}, retention {args.retention}, "
              f"N {args.capacity}, {fixed:,} fixed users", flush=True)
        out["users"] = run_case(client, settings, Case(per, checkpoints, args.user_days, args.base_items,
                                                       sample=args.sample), "users")
        _keep(out, args)
        out["items"] = [run_case(client, settings, Case(args.item_users, (1,), args.user_days, n, sample=args.sample),
                                 f"items {n}")[0] for n in args.items]
        _keep(out, args)
        fixed_case = Case(fixed, (1,), 30, args.base_items, sample=args.sample)
        out["retention"] = [run_case(client, retention_settings(settings, r), replace(fixed_case, days=r),
                                     f"retention {r}")[0] | {"retention_days": r} for r in args.retention]
        _keep(out, args)
        out["capacity"] = [run_case(client, capacity_settings(settings, n), fixed_case, f"N {n}")[0] | {"capacity": n}
                           for n in args.capacity]
        out["settings"] = {"shards": settings.redis.shards, "bloom": settings.bloom.model_dump(),
                           "lastn": settings.lastn.model_dump(), "windows": settings.stats.windows,
                           "events_per_batch": Case(1, (1,), 1, 1).events_per_batch}
    out["bench_wall_s"] = time.perf_counter() - t0
    return out


def _ints(text: str) -> list[int]:
    return [int(float(v)) for v in text.split(",") if v]


def main(argv: list[str] | None = None) -> None:
    from bench.cost_report import report

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=_ints, default=_ints("10000,30000,100000,300000,1000000"),
                        help="user-count checkpoints (multiples of --per-partition)")
    parser.add_argument("--per-partition", type=int, default=10_000, help="users per source partition")
    parser.add_argument("--user-days", type=int, default=1, help="days of history in the users and items sweeps")
    parser.add_argument("--items", type=_ints, default=_ints("2000,20000,200000"), help="catalogue sizes")
    parser.add_argument("--base-items", type=int, default=50_000, help="catalogue of the other sweeps")
    parser.add_argument("--item-users", type=int, default=5_000, help="users of the items sweep")
    parser.add_argument("--fixed-users", type=int, default=300, help="users of the retention and last-N sweeps")
    parser.add_argument("--retention", type=_ints, default=_ints("7,31,90"), help="retention days")
    parser.add_argument("--capacity", type=_ints, default=_ints("50,200,1000"), help="last-N capacities")
    parser.add_argument("--sample", type=int, default=300, help="users whose keys are measured one by one")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a minute)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    if args.quick:
        args.users, args.per_partition, args.items, args.base_items = [500, 1500], 500, [500, 5000], 5000
        args.item_users, args.fixed_users, args.sample = 300, 100, 100
        args.retention, args.capacity = [7, 31], [50, 200]
    bad = [u for u in args.users if u % args.per_partition]
    if bad:
        parser.error(f"--users {bad} are not multiples of --per-partition {args.per_partition}")
    report(run(args), args.out)


if __name__ == "__main__":
    main()
