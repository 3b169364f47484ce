"""``recstream bench freshness``: produce → readable per feature family at fractions of the sustained maximum.

One private broker + Redis (:func:`bench.common.private_services`). The sustained maximum is what one
worker (every family on) drains from a backlog (:func:`bench.ingest_worker.bench_worker`), unless
``--max-eps`` gives it. Then the worker and the trainer run together, and for each fraction (25 / 50 / 75 %
by default) synthetic live traffic stamped with the wall clock is paced at that rate for ``--seconds`` while
``recstream canary`` probes every family each second (:func:`recstream.demo_live.run_live`, the demo's live
phase); the report gives p50 / p99 per family, the canary probes that timed out, and the rate achieved.
Worker, trainer, canary, producer, broker and Redis share the machine's cores, as they would in the demo.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from bench.common import private_services, with_sections, write_results
from bench.ingest_bench import WARMUP_TOPIC, bench_producer, create_topics, synthetic_events
from bench.ingest_worker import bench_worker
from infra.settings import Settings
from infra.topics import ensure_topics
from recstream.demo_live import LiveResult, run_live, wait_caught_up
from recstream.generate import GeneratorConfig, World
from stream.worker_process import WorkerProcess

__all__ = ["measure_max", "run_fractions"]

FAMILIES = ("exposure", "last_n", "stats", "samples", "embeddings")
GOAL_P99_MS = 500.0
GOAL_AT_EPS = 5_000.0


def measure_max(settings: Settings, events: int) -> float:
    """Events/s one worker drains from a backlog of ``events`` synthetic events (all families on)."""
    topic = "bench-freshness-backlog"
    create_topics(settings, [topic, WARMUP_TOPIC])
    bench_producer(settings, topic, synthetic_events(events), batched=True)
    return float(bench_worker(settings, topic, events, procs=1)["eps"])


def _row(max_eps: float, target: float, live: LiveResult) -> dict[str, Any]:
    fams = {f: {"p50_ms": r.p50_s * 1000, "p99_ms": r.p99_s * 1000, "probes": r.probes, "missed": r.misses}
            for f, r in live.freshness.items()}
    return {"fraction": target / max_eps, "target_eps": target, "achieved_eps": live.rate, "families": fams}


def run_fractions(settings: Settings, max_eps: float, fractions: list[float], seconds: float,
                  log_dir: Path) -> list[dict[str, Any]]:
    """The live phase at each fraction of ``max_eps`` (a fraction above 1 is an absolute rate in events/s:
    ``5000`` = 5,000 events/s), with the worker and the trainer running."""
    world = World(GeneratorConfig(users=2_000, items=5_000, seed=5))
    rows = []
    with WorkerProcess(settings, log_dir / "worker.log") as worker, \
            WorkerProcess(settings, log_dir / "trainer.log", args=("trainer",)) as trainer:
        wait_caught_up(settings, (worker, trainer), 120)
        for fraction in fractions:
            target = fraction * max_eps if fraction <= 1 else fraction
            print(f"freshness at {target:,.0f} ev/s ({target / max_eps:.0%} of {max_eps:,.0f})", flush=True)
            live = run_live(settings, world, target, seconds, log_dir, (worker, trainer))
            rows.append(_row(max_eps, target, live))
    return rows


def _table(max_eps: float, rows: list[dict[str, Any]]) -> list[list[str]]:
    header = ["load", "achieved ev/s", *(f"{f} p50 / p99 ms" for f in FAMILIES)]
    table = [header]
    for row in rows:
        cells = []
        for fam in FAMILIES:
            r = row["families"].get(fam)
            miss = f" ({r['missed']} missed)" if r and r["missed"] else ""
            cells.append(f"{r['p50_ms']:,.0f} / {r['p99_ms']:,.0f}{miss}" if r and r["probes"] else "–")
        load = f"{row['target_eps']:,.0f} ev/s ({row['fraction']:.0%} of {max_eps:,.0f})"
        table.append([load, f"{row['achieved_eps']:,.0f}", *cells])
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-eps", type=float, default=0.0, help="the sustained maximum (0 = measure it)")
    parser.add_argument("--backlog", type=int, default=100_000, help="events drained to measure the maximum")
    parser.add_argument("--fractions", default="0.25,0.5,0.75,5000",
                        help="loads: fractions of the maximum, or events/s when above 1")
    parser.add_argument("--seconds", type=float, default=30.0, help="live traffic per fraction")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--batch-within-s", type=float, default=None,
                        help="the worker's worker.batch_within_s (default: the settings' default)")
    parser.add_argument("--linger-ms", type=float, default=None,
                        help="the live producer's producer.linger_ms (default: the settings' default)")
    parser.add_argument("--logs", type=Path, default=None, help="keep the processes' logs here (default: temp)")
    args = parser.parse_args(argv)
    fractions = [float(x) for x in args.fractions.split(",") if x.strip()]
    logging.getLogger("recstream.producer").setLevel(logging.ERROR)
    with private_services() as base:
        worker: dict[str, Any] = {"app_id": "bench-freshness", "metrics_port": 0}
        if args.batch_within_s is not None:
            worker["batch_within_s"] = args.batch_within_s
        producer = {} if args.linger_ms is None else {"linger_ms": args.linger_ms}
        settings = with_sections(base, worker=worker, producer=producer)
        ensure_topics(settings)
        max_eps = args.max_eps or measure_max(base, args.backlog)
        logs = args.logs or base.home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        rows = run_fractions(settings, max_eps, fractions, args.seconds, logs)
    results = {"max_eps": max_eps, "max_measured": not args.max_eps, "seconds": args.seconds, "rows": rows,
               "batch_within_s": settings.worker.batch_within_s, "linger_ms": settings.producer.linger_ms,
               "goal": {"p99_ms": GOAL_P99_MS, "at_eps": GOAL_AT_EPS}}
    print(write_results(args.out, "freshness", results, _table(max_eps, rows)).read_text())


if __name__ == "__main__":
    main()
