"""The chaos run at full size: ``recstream bench chaos [--events 1000000] [--kills 5]``.

A private broker + Redis; a seeded stream (duplicates, disorder, late events) fed at ``--rate`` events/s
while the worker and the trainer are each SIGKILLed ``--kills`` times at random moments and restarted
(tests/chaos/chaos_run.py); then every Bloom answer, last-N sequence and statistic is compared with the
brute-force reference, the distinct samples with the reference join, and the trainer's trained count with
the distinct positives. Writes ``chaos.json`` / ``chaos.md`` to ``--out``: events, kills, mismatches,
recovery time after each worker kill, throughput during the chaos.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import redis

from bench.common import private_services, write_results
from filters.model_store import ModelStore
from infra.topics import ensure_topics
from tests.chaos.chaos_run import chaos_settings, run_chaos
from tests.pipeline_check import (
    assert_features_match,
    assert_samples_match,
    distinct_positives,
    make_stream,
    private_pipeline,
    topic_order,
)


def _check(name: str, check: Any) -> tuple[str, float]:
    started = time.monotonic()
    try:
        check()
    except AssertionError as exc:
        return f"MISMATCH: {str(exc)[:300]}", time.monotonic() - started
    return "0 mismatches", time.monotonic() - started


def run(args: argparse.Namespace) -> dict[str, Any]:
    events, meta = make_stream(seed=args.seed, n=args.events, users=args.users, items=args.items)
    with private_services() as base:
        settings = chaos_settings(private_pipeline(base))
        ensure_topics(settings)
        report = run_chaos(settings, events, meta, worker_kills=args.kills, trainer_kills=args.kills, seed=args.seed,
                           log_dir=settings.home / "logs", rate=args.rate, progress=print)
        print(f"chaos done in {report.seconds:.0f} s; checking against the reference …")
        ordered = topic_order(settings, events)
        features = _check("features", lambda: assert_features_match(settings, ordered))
        duplicates: list[int] = []
        samples = _check("samples", lambda: duplicates.append(assert_samples_match(settings, ordered)))
        store = ModelStore(redis.Redis.from_url(settings.redis.effective_url), settings.redis.shards)
        trained = store.manifest(store.current() or "").samples_seen
        want = distinct_positives(settings, ordered)
    return {"events": len(events), "distinct_events": len({e.event_id for e in events}), "users": args.users,
            "items": args.items, "rate": args.rate, "worker_kills": report.worker_kills,
            "trainer_kills": report.trainer_kills, "recovery_s": [round(s, 2) for s in report.recovery_s],
            "seconds": round(report.seconds, 1), "events_per_s": round(report.events_per_s),
            "features": features[0], "features_check_s": round(features[1], 1), "samples": samples[0],
            "samples_reemitted": duplicates[0] if duplicates else None, "trained": trained,
            "distinct_positives": want}


def _table(res: dict[str, Any]) -> list[list[str]]:
    rec = res["recovery_s"]
    return [
        ["measure", "value"],
        ["events replayed (deliveries; distinct)", f"{res['events']:,} ({res['distinct_events']:,}), "
                                                   f"{res['users']:,} users, {res['items']:,} items"],
        ["SIGKILLs: worker / trainer", f"{res['worker_kills']} / {res['trainer_kills']}"],
        ["Bloom answers, last-N, statistics vs brute force", res["features"]],
        ["distinct samples vs the reference join", f"{res['samples']} ({res['samples_reemitted']} re-emitted "
                                                    f"after kills, deduplicated by sample id)"],
        ["trainer: trained samples / distinct positives", f"{res['trained']:,} / {res['distinct_positives']:,}"
                                                          + (" (exact)" if res['trained'] == res['distinct_positives']
                                                             else " (MISMATCH)")],
        ["worker recovery after each SIGKILL (kill → next commit)", ", ".join(f"{s:.1f} s" for s in rec)],
        ["throughput during the chaos (feed start → caught up)", f"{res['events_per_s']:,} events/s "
                                                                  f"(fed at {res['rate']:,.0f}/s)"],
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--items", type=int, default=5_000)
    parser.add_argument("--kills", type=int, default=5, help="SIGKILLs of the worker, and as many of the trainer")
    parser.add_argument("--rate", type=float, default=6000.0, help="feed rate, events/s")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    res = run(args)
    md = write_results(args.out, "chaos", res, _table(res))
    print(md.read_text())


if __name__ == "__main__":
    main()
