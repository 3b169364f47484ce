"""``python -m bench.stats_bench``: windowed statistics, recstream's shared tiles vs Faust windowed tables.

Issue 5: worker events/s with statistics on and, side by side in the same run, the same counts computed with
plain Faust windowed tables (one per window); events/s and memory of both.

Method (one private Kafka + Redis pair, :func:`bench.common.private_services`):

1. **Events.** :func:`recstream.generate.generate_events` (users ``N/50``, items ``N/20``, ``--days`` of event
   time ending *now*, see 3.), with ``category`` / ``author_id`` filled in from the generator's item
   metadata on every event, so neither side needs metadata enrichment and both count exactly the same
   (kind, entity) pairs. Duplicate (0.5 %) and late (1 %) deliveries are left in.
2. **recstream.** ``recstream worker`` (:class:`stream.worker_process.WorkerProcess`) with everything on
   (Bloom filters, last-N, user / user x category tiles, item / author stages). As in
   ``bench.ingest_bench.bench_worker``: one warm-up event until caught up, then the other ``N - 1`` events
   produced to the events topic as fast as possible; events/s = ``(N - 1)`` / (first produce →
   :class:`stream.lag.LagProbe` says the group caught up). Memory: Redis
   ``used_memory`` delta, ``MEMORY USAGE`` of every statistics key (``rs2:*:st*``) and of the other key
   families, the worker's RSS (``VmRSS`` after warm-up, ``VmHWM`` = peak, ``/proc/<pid>/status``); CPU
   seconds of the worker, the Redis server and the Kafka broker. The sampled counts are read here (step 4). Then, as a
   throughput reference that small ``N`` cannot give (the 1 s commit interval is a large share of a few
   seconds), ``--worker-events`` more events (another seed) are timed the same way.
3. **Faust.** :mod:`bench.faust_windowed` as a subprocess, after the worker stopped (the two never share the
   2 CPUs), over a copy of the same ``N`` events produced to its own topic (same partition count and keys,
   so the same partitions). One ``memory://`` windowed table per window, hopping by default — see its
   docstring for why, and for repartitioning and event time. Faust expires windows by the wall clock,
   which is why the events end at the current time: with historical timestamps every window would vanish
   at the first cleanup. Events/s = ``(N - 1)`` / (first event processed → every agent done and the
   producer flushed), inside the subprocess (it reads a full topic; recstream is timed against a live
   producer, which is several times faster than either). Memory: peak RSS, RSS at the first event, table
   keys and a deep-size estimate of the tables; plus the changelog records it wrote to Kafka.
4. **Check.** The 3 busiest + 3 random entities of each kind, read from recstream with
   ``FeatureClient.stats(kind, id, at=T)`` (``T`` = the 5-minute boundary after the newest event; window
   ``W`` then covers ``[E - W, E)`` with ``E = ceil(T / tile) * tile``) and from the Faust window starting at
   ``E - W`` (tumbling: the bucket holding ``E - 1 ms``). Each side is compared with a brute-force count
   over the produced events, with dedup by ``event_id`` (recstream's semantics) and without (Faust's).
5. **Output.** ``stats.json`` + ``stats.md`` via :func:`bench.common.write_results`, notes appended to the md.

Ratios, not absolutes, are the result: the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import redis
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec  # type: ignore[attr-defined]

from bench.common import private_services, write_results
from bench.stats_reference import (
    TILE_ALIGN_MS,
    Counts,
    Payload,
    choose_sample,
    compare,
    make_events,
    payloads_of,
    recstream_check,
    reference_counts,
    window_bounds,
)
from bench.stats_report import build_table, notes_for
from filters.events import EVENT_TYPES
from infra.kafka_broker import running_pid
from infra.settings import Settings
from stream.lag import LagProbe
from stream.producer import EventProducer
from stream.worker_process import WorkerProcess

FAUST_TOPIC = "bench-stats-faust"

_FAMILIES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("stats tiles", re.compile(r":st(:c:.+)?$")),
    ("exposure Bloom", re.compile(r":bf\d+(:|$)")),
    ("last-N", re.compile(r":seq:")),
    ("dedup", re.compile(r":ddt?:\d+$")),
    ("replay guards", re.compile(r":applied$")),
    ("watermarks", re.compile(r"^rs2:wm:")),
    ("item meta", re.compile(r":meta$")),
)


# -- recstream ---------------------------------------------------------------------------------------------


def _proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM (KiB) of a process."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(rest.split()[0])
    return out


def _proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (``/proc/<pid>/stat`` fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _broker_cpu_s(settings: Settings) -> float:
    """CPU seconds of the private Kafka broker (0 if its pid is unknown)."""
    pid = running_pid(settings)
    return 0.0 if pid is None else _proc_cpu_s(pid)


def _redis_cpu_s(client: redis.Redis) -> float:
    info: dict[str, Any] = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def redis_key_memory(client: redis.Redis) -> dict[str, dict[str, int]]:
    """``{family: {"keys": n, "bytes": sum of MEMORY USAGE}}`` over every key (SCAN, pipelined)."""
    out: dict[str, dict[str, int]] = defaultdict(lambda: {"keys": 0, "bytes": 0})
    batch: list[str] = []

    def flush() -> None:
        pipe = client.pipeline(transaction=False)
        for k in batch:
            pipe.memory_usage(k, samples=0)
        for k, used in zip(batch, pipe.execute(), strict=True):
            family = next((name for name, rx in _FAMILIES if rx.search(k)), "other")
            out[family]["keys"] += 1
            out[family]["bytes"] += int(used or 0)
        batch.clear()

    for raw in client.scan_iter(count=1000):
        batch.append(raw.decode() if isinstance(raw, bytes) else str(raw))
        if len(batch) >= 1000:
            flush()
    if batch:
        flush()
    return dict(out)


def recstream_counts(settings: Settings, sample: Sequence[tuple[str, str]], at_ms: int) -> tuple[Counts, str]:
    """Counts of the sampled entities as served (``FeatureClient.stats``), and which reader was used."""
    url = settings.redis.effective_url
    read: Callable[..., dict[str, dict[str, float]]]
    try:
        from serving.client import FeatureClient

        read = FeatureClient(url, settings=settings).stats
        used = "serving.client.FeatureClient.stats"
    except ImportError:  # serving/client.py not there yet: the reader FeatureClient mounts
        from serving.stats import StatsReader

        read = StatsReader(redis.Redis.from_url(url), settings).stats
        used = "serving.stats.StatsReader.stats (serving.client was not importable)"
    out: Counts = {}
    for kind, entity in sample:
        user, _, category = entity.partition("|")
        ident: str | tuple[str, str] = (user, category) if kind == "user_category" else entity
        served = read(kind, ident, at=at_ms)
        out.setdefault(kind, {})[entity] = {w: {t: round(v[t]) for t in EVENT_TYPES} for w, v in served.items()}
    return out, used


def _produce_timed(settings: Settings, probe: LagProbe, payloads: Sequence[Payload]) -> tuple[float, float]:
    """Produce as fast as possible, wait until caught up; (seconds until caught up, seconds producing)."""
    started = time.perf_counter()
    with EventProducer(settings) as producer:
        for key, value in payloads:
            producer.send_raw(settings.kafka.events_topic, key, value)
        producer.flush(120)
    produced = time.perf_counter() - started
    probe.wait_until_caught_up(900, poll_s=0.2)
    return time.perf_counter() - started, produced


def run_recstream(
    settings: Settings, payloads: Sequence[Payload], extra: Sequence[Payload],
    sample: Sequence[tuple[str, str]], at_ms: int,
) -> dict[str, Any]:
    """The full worker: warm-up, the ``N - 1`` timed events, memory and sampled counts, then ``extra``."""
    probe = LagProbe(settings)
    client = redis.Redis.from_url(settings.redis.effective_url)
    log = settings.home / "logs" / "stats-bench-worker.log"
    with WorkerProcess(settings, log, loglevel="warning") as worker:
        pid = worker.pid
        assert pid is not None
        with EventProducer(settings) as producer:  # warm-up: group joined, scripts loaded
            producer.send_raw(settings.kafka.events_topic, *payloads[0])
        probe.wait_until_caught_up(120)
        used0 = int(client.info("memory")["used_memory"])
        rss0 = _proc_status(pid)["VmRSS"]
        cpu0, rcpu0, kcpu0 = _proc_cpu_s(pid), _redis_cpu_s(client), _broker_cpu_s(settings)
        elapsed, produced = _produce_timed(settings, probe, payloads[1:])
        status = _proc_status(pid)
        cpu, rcpu = _proc_cpu_s(pid) - cpu0, _redis_cpu_s(client) - rcpu0
        kcpu = _broker_cpu_s(settings) - kcpu0
        repartition = 0  # item and author tiles are written by the user-keyed stage: no repartition topic
        used1 = int(client.info("memory")["used_memory"])
        families = redis_key_memory(client)
        counts, reader = recstream_counts(settings, sample, at_ms)
        extra_eps = 0.0
        if extra:
            extra_elapsed, _ = _produce_timed(settings, probe, extra)
            extra_eps = len(extra) / extra_elapsed
    return {
        "timed_events": len(payloads) - 1, "eps": (len(payloads) - 1) / elapsed, "elapsed_s": elapsed,
        "produce_s": produced, "worker_cpu_s": cpu, "redis_cpu_s": rcpu, "broker_cpu_s": kcpu,
        "repartition_records": repartition,
        "worker_rss_after_warmup_kb": rss0, "worker_rss_end_kb": status["VmRSS"],
        "worker_peak_rss_kb": status["VmHWM"],
        "redis_used_memory_delta": used1 - used0, "redis_used_memory": used1, "redis_keys": families,
        "stats_keys": families.get("stats tiles", {}).get("keys", 0),
        "stats_bytes": families.get("stats tiles", {}).get("bytes", 0),
        "extra_events": len(extra), "extra_eps": extra_eps,
        "counts": counts, "reader": reader,
    }


# -- Faust -------------------------------------------------------------------------------------------------


def _admin(settings: Settings) -> AdminClient:
    return AdminClient({"bootstrap.servers": settings.kafka.bootstrap, "broker.address.family": "v4"})


def copy_for_faust(settings: Settings, payloads: Sequence[Payload]) -> None:
    """The same events on :data:`FAUST_TOPIC` (same partition count and keys → same partitions)."""
    admin = _admin(settings)  # kept referenced until the futures resolved
    for fut in admin.create_topics([NewTopic(FAUST_TOPIC, settings.kafka.partitions, 1)]).values():
        fut.result()
    with EventProducer(settings) as producer:
        for key, value in payloads:
            producer.send_raw(FAUST_TOPIC, key, value)
        producer.flush(120)


def _topic_records(settings: Settings, prefix: str) -> dict[str, int]:
    """Records written to each topic whose name starts with ``prefix`` (sum of end offsets)."""
    admin = _admin(settings)
    topics = admin.list_topics(timeout=10).topics
    tps = [TopicPartition(t, p) for t, meta in topics.items() if t.startswith(prefix) for p in meta.partitions]
    if not tps:
        return {}
    out: dict[str, int] = defaultdict(int)
    for tp, fut in admin.list_offsets({tp: OffsetSpec.latest() for tp in tps},  # type: ignore[no-untyped-call]
                                      request_timeout=30).items():
        out[tp.topic] += fut.result().offset
    return dict(out)


def run_faust(
    settings: Settings, mode: str, n: int, n_author: int, sample: Sequence[tuple[str, str]],
    bounds: dict[str, tuple[int, int]],
) -> dict[str, Any]:
    """One :mod:`bench.faust_windowed` subprocess over :data:`FAUST_TOPIC`; its result plus topic records."""
    work = settings.home / f"faust-{mode}"
    work.mkdir(parents=True, exist_ok=True)
    app_id = f"bench-windowed-{mode}"
    sample_path, out = work / "sample.json", work / "result.json"
    starts = {w: start for w, (start, _) in bounds.items()}
    sample_path.write_text(json.dumps({"entities": [list(s) for s in sample], "starts": starts}))
    cmd = [
        sys.executable, "-m", "bench.faust_windowed", "--bootstrap", settings.kafka.bootstrap,
        "--topic", FAUST_TOPIC, "--app-id", app_id, "--partitions", str(settings.kafka.partitions),
        "--expect", str(n), "--expect-author", str(n_author), "--windows", json.dumps(settings.stats.windows),
        "--lateness-ms", str(settings.stats.allowed_lateness_ms), "--mode", mode,
        "--sample", str(sample_path), "--out", str(out), "--datadir", str(work),
    ]
    log = settings.home / "logs" / f"stats-bench-faust-{mode}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    kcpu0 = _broker_cpu_s(settings)
    with log.open("wb") as fh:
        subprocess.run(cmd, timeout=1800, check=False, stdout=fh, stderr=subprocess.STDOUT)
    kcpu = _broker_cpu_s(settings) - kcpu0
    if not out.exists():
        tail = log.read_text(errors="replace")[-3000:]
        msg = f"the Faust windowed-table worker ({mode}) did not finish; {log}:\n{tail}"
        raise RuntimeError(msg)
    result: dict[str, Any] = json.loads(out.read_text())
    records = _topic_records(settings, app_id)
    result["elapsed_s"] = result["last_ts"] - result["first_ts"]
    result["eps"] = float(result["timed"]) / result["elapsed_s"]
    result["cpu_timed_s"] = result["cpu_s"] - result["cpu_first_event_s"]
    result["broker_cpu_s"] = kcpu
    result["changelog_records"] = sum(v for t, v in records.items() if t.endswith("-changelog"))
    result["repartition_records"] = sum(v for t, v in records.items() if not t.endswith("-changelog"))
    result["table_keys"] = sum(t["keys"] for t in result["tables"].values())
    result["table_bytes"] = sum(t["bytes"] for t in result["tables"].values())
    return result


# -- comparison and output ---------------------------------------------------------------------------------


def run(
    n: int, days: float, modes: Sequence[str], out_dir: Path, worker_events: int = 20_000, partitions: int = 8
) -> dict[str, Any]:
    t0 = time.perf_counter()
    events = make_events(n, days)
    payloads = payloads_of(events)
    extra = payloads_of(make_events(worker_events, days, seed=6)) if worker_events else []
    n = len(payloads)
    n_author = sum(ev.author_id is not None for ev in events)
    sample = choose_sample(events)
    duplicates = n - len({ev.event_id for ev in events})
    at_ms = math.ceil((max(ev.ts for ev in events) + 1) / TILE_ALIGN_MS) * TILE_ALIGN_MS
    print(f"stats bench: {n:,} events over {days:g} days, {partitions} partitions, Faust {'/'.join(modes)} ...",
          flush=True)
    faust: dict[str, dict[str, Any]] = {}
    checks: dict[str, Any] = {"faust": {}}
    with private_services(partitions) as settings:
        hopping = window_bounds(settings, at_ms, "hopping")
        rec = run_recstream(settings, payloads, extra, sample, at_ms)
        rec_counts = rec.pop("counts")
        ref_dedup = reference_counts(events, sample, hopping, dedup=True)
        checks["recstream"] = recstream_check(rec_counts, ref_dedup)
        print(f"  recstream: {rec['eps']:,.0f} events/s ({rec['extra_eps']:,.0f} on {len(extra):,} more)",
              flush=True)
        copy_for_faust(settings, payloads)
        for mode in modes:
            bounds = window_bounds(settings, at_ms, mode)
            f = run_faust(settings, mode, n, n_author, sample, bounds)
            print(f"  Faust {mode}: {f['eps']:,.0f} events/s", flush=True)
            ref_raw = reference_counts(events, sample, bounds, dedup=False)
            same_windows = mode == "hopping"
            checks["faust"][mode] = compare(rec_counts if same_windows else None, f.pop("counts"),
                                            ref_dedup, ref_raw)
            faust[mode] = f
        windows_ms = {"hopping": hopping, **{m: window_bounds(settings, at_ms, m) for m in modes}}
        notes = notes_for(settings, days, duplicates, rec, faust, checks)
    main = faust[modes[0]]
    rec_total = rec["worker_peak_rss_kb"] * 1024 + rec["redis_used_memory_delta"]
    results = {
        "events": n, "days": days, "partitions": partitions, "duplicate_deliveries": duplicates,
        "query_time_ms": at_ms, "windows_ms": windows_ms, "sample": [list(s) for s in sample],
        "recstream": rec, "faust": faust, "check": checks,
        "ratios_vs": modes[0],
        "ratios": {
            "eps_recstream_over_faust": rec["eps"] / main["eps"],
            "state_bytes_recstream_over_faust": rec["stats_bytes"] / main["table_bytes"],
            "peak_rss_recstream_over_faust": rec["worker_peak_rss_kb"] / main["maxrss_kb"],
            "total_memory_recstream_over_faust": rec_total / (main["maxrss_kb"] * 1024),
        },
        "bench_wall_s": time.perf_counter() - t0,
        "notes": notes,
    }
    md = write_results(out_dir, "stats", results, build_table(rec, faust, checks))
    with md.open("a") as fh:
        fh.write(f"\n{n:,} events ({duplicates} duplicate deliveries), {days:g} days of event time ending now, "
                 f"{partitions} partitions; whole bench {results['bench_wall_s']:.0f} s. "
                 "Ratios, not absolutes: the machine is shared and noisy.\n\n## Notes\n\n")
        fh.write("".join(f"* {note}\n" for note in notes))
    print(md.read_text())
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2_000, help="events both sides process")
    parser.add_argument("--worker-events", type=int, default=20_000,
                        help="more events timed on the recstream worker only (0 = none)")
    parser.add_argument("--days", type=float, default=2.0, help="event-time span, ending now")
    parser.add_argument("--faust", choices=("hopping", "tumbling", "both"), default="hopping",
                        help="Faust window kind(s); hopping matches recstream's windows")
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    modes = ["hopping", "tumbling"] if args.faust == "both" else [args.faust]
    run(args.events, args.days, modes, args.out, args.worker_events, args.partitions)


if __name__ == "__main__":
    main()
