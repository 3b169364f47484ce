"""``recstream bench all``: every benchmark in one run, one report.

Runs the benchmarks one after the other (each with its own private broker and Redis, sized by
``--size``), each writing its JSON + markdown into ``<out>/all/``; then writes ``<out>/all.md`` and
``<out>/all.json`` (the headline figures against the goals, then every benchmark's own table; with ``--only``
the other steps of the previous run are kept, marked as earlier) and the plots
``<out>/all_throughput.png``, ``all_freshness.png`` and ``all_reads.png``. A benchmark that fails is reported
with its error; the others still run. The machine is shared and has two cores: compare the ratios inside
one benchmark (its variants run interleaved), and read absolute figures as this run's.
"""

from __future__ import annotations

import argparse
import importlib
import json
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.all_plots import plot_freshness, plot_reads, plot_throughput
from bench.common import machine
from infra.settings import Settings

__all__ = ["STEPS", "Step", "headline", "main"]


@dataclass(frozen=True)
class Step:
    """One benchmark of the run: its module, its arguments per size, and the result it writes."""

    name: str
    module: str
    args: dict[str, list[str]]  # size -> argv (without --out)
    result: str  # <result>.json / .md in the output folder
    title: str


STEPS = [
    Step("ingest", "bench.ingest_bench", {
        "full": ["--events", "200000", "--only", "aiokafka-batched,confluent-single,faust-batched,worker-1p,worker-2p"],
        "quick": ["--events", "40000", "--only", "aiokafka-batched,worker-1p,worker-2p"]},
        "ingest", "Throughput: raw consumers, Faust and the worker (1 and 2 processes), every family on"),
    Step("freshness", "bench.freshness_bench", {
        "full": ["--seconds", "30"], "quick": ["--seconds", "25", "--backlog", "30000", "--fractions", "0.5"]},
        "freshness", "Freshness per family at fractions of the sustained maximum"),
    Step("reads", "bench.reads_bench", {"full": [], "quick": ["--iterations", "300"]}, "reads",
         "Read latencies (last_n, stats_multi)"),
    Step("bloom", "bench.bloom_bench", {"full": [], "quick": ["--quick"]}, "bloom",
         "Exposure filter (filter_unseen) against rbloom and pybloom-live"),
    Step("serving", "bench.serving_bench", {"full": ["--items", "100000"], "quick": ["--requests", "100",
                                                                                  "--parts", "requests"]},
         "serving", "request_features and recommend"),
    Step("learning", "bench.learning_bench", {"full": [], "quick": ["--samples", "40000", "--rows", "20000",
                                                                    "--probes", "5"]},
         "learning", "Trainer samples/s, publish latency, click → embedding"),
    Step("peers", "bench.peers_bench", {"full": [], "quick": ["--quick"]}, "peers",
         "Side by side: naive Redis writes, dense Adam, Feast-style reads"),
    Step("stats", "bench.stats_bench", {"full": ["--events", "1000"], "quick": ["--events", "500",
                                                                              "--worker-events", "5000"]},
         "stats", "Statistics against plain Faust windowed tables"),
    Step("cost", "bench.cost_bench", {  # the whole sweep (to 100k users, ~15 min): `recstream bench cost`
        "full": ["--users", "10000,30000", "--items", "2000,20000", "--retention", "7,31", "--capacity", "50,200"],
        "quick": ["--quick"]}, "cost", "Cost curves: Redis bytes and CPU as users, items, N and retention grow"),
    Step("batch-shape", "bench.batch_shape_bench", {"full": [], "quick": ["--events", "40000"]}, "batch_shape",
         "The ingest stage per event by batch shape: live-like small batches vs a backlog's"),
    Step("profile-worker", "bench.profile_worker", {"full": [], "quick": ["--events", "50000", "--duration", "8"]},
         "profile", "Where the worker's time goes (py-spy)"),
    Step("profile-trainer", "bench.profile_trainer", {"full": [], "quick": ["--samples", "60000",
                                                                           "--duration", "8"]},
         "profile_trainer", "Where the trainer's time goes (py-spy)"),
]


def run_step(step: Step, size: str, out: Path) -> dict[str, Any]:
    """Run one benchmark; its status, duration and (when it wrote one) its JSON."""
    started = time.monotonic()
    print(f"\n=== bench all: {step.name} ({size}) ===", flush=True)
    try:
        importlib.import_module(step.module).main([*step.args[size], "--out", str(out)])
        status, error = "ok", None
    except (Exception, SystemExit) as exc:  # one failing benchmark must not stop the run
        status, error = "failed", f"{type(exc).__name__}: {exc}".strip()
        traceback.print_exc()
    path = out / f"{step.result}.json"
    data = json.loads(path.read_text()) if path.exists() and status == "ok" else None
    return {"status": status, "error": error, "seconds": time.monotonic() - started, "data": data}


def earlier_results(out: Path, exclude: set[str]) -> dict[str, dict[str, Any]]:
    """The steps of the previous run (``all.json``) that ended ok and are not run again: an ``--only`` run
    refreshes some benchmarks and keeps the others in the report, marked as earlier."""
    summary = out / "all.json"
    steps = json.loads(summary.read_text()).get("steps", {}) if summary.exists() else {}
    kept = {}
    for step in STEPS:
        prev, path = steps.get(step.name), out / "all" / f"{step.result}.json"
        if step.name in exclude or not prev or not str(prev.get("status")).startswith("ok") or not path.exists():
            continue
        data = json.loads(path.read_text())
        kept[step.name] = {**prev, "status": f"ok (earlier run, {data.get('when', '?')})", "data": data}
    return kept


def _get(data: dict[str, Any] | None, *path: Any) -> Any:
    for key in path:
        if not isinstance(data, dict | list):
            return None
        try:
            data = data[key]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _freshness_at(rows: list[dict[str, Any]], eps: float) -> dict[str, Any] | None:
    near = [r for r in rows if abs(r["target_eps"] - eps) < 1]
    return near[0] if near else None


Goal = tuple[str, float | None, str, Callable[[float], bool]]


def headline(results: dict[str, dict[str, Any]]) -> list[Goal]:
    """The issue's goals with this run's figures: (goal, value, unit, met?)."""
    ingest, fresh = results.get("ingest", {}).get("data"), results.get("freshness", {}).get("data")
    learning = results.get("learning", {}).get("data")
    families = (_freshness_at(_get(fresh, "rows") or [], 5000) or {}).get("families", {})
    # the features within half a second; the embeddings on their own clock (issue 11: publish period + 2 s)
    worst = max((f["p99_ms"] for name, f in families.items() if name != "embeddings" and f["probes"]), default=None)
    published = families.get("embeddings", {})
    embeddings = published.get("p99_ms") if published.get("probes") else None
    period_ms = Settings().learning.publish_every_s * 1000
    return [
        ("≥ 20,000 events/s end to end, every family on, 1 worker", _get(ingest, "variants", "worker-1p", "median_eps"),
         "events/s", lambda v: v >= 20_000),
        ("(2 workers, same machine)", _get(ingest, "variants", "worker-2p", "median_eps"), "events/s",
         lambda v: v >= 20_000),
        ("freshness p99 ≤ 500 ms at 5,000 events/s (worst of exposure, last_n, stats, samples)", worst, "ms",
         lambda v: v <= 500),
        (f"embeddings p99 ≤ publish period + 2 s = {period_ms + 2000:,.0f} ms at 5,000 events/s", embeddings, "ms",
         lambda v: v <= period_ms + 2000),
        ("trainer ≥ 100,000 samples/s (from Kafka, all steps)",
         _get(learning, "throughput", "trainer", "samples_per_s"), "samples/s", lambda v: v >= 100_000),
    ]


def _embedded(step: Step, out: Path) -> list[str]:
    md = out / f"{step.result}.md"
    if not md.exists():
        return ["(no report)"]
    lines = md.read_text().splitlines()
    body = lines[1:] if lines and lines[0].startswith("# ") else lines
    return [line.replace("# ", "#### ", 1) if line.startswith("#") else line for line in body]


def write_report(out: Path, size: str, results: dict[str, dict[str, Any]], plots: list[str]) -> Path:
    """``all.md`` + ``all.json`` from the steps' results."""
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    mach = machine()
    lines = [f"# all ({size})", "", f"{when}, {mach['cpus']} CPUs, Python {mach['python']}; every benchmark with its "
             "own broker and Redis on this machine, one after the other.", "",
             "| goal | this run | met |", "|---|---|---|"]
    for goal, value, unit, met in headline(results):
        shown = f"{value:,.0f} {unit}" if value is not None else "not measured"
        lines.append(f"| {goal} | {shown} | {'yes' if value is not None and met(value) else 'no'} |")
    lines += ["", "| benchmark | status | minutes |", "|---|---|---|"]
    lines += [f"| [{s.name}](all/{s.result}.md) | {results[s.name]['status']}"
              f"{': ' + results[s.name]['error'][:120] if results[s.name]['error'] else ''} | "
              f"{results[s.name]['seconds'] / 60:.1f} |" for s in STEPS if s.name in results]
    lines += ["", *(f"![{p}]({p})" for p in plots)]
    for step in STEPS:
        if step.name in results:
            lines += ["", f"## {step.title}", "", *_embedded(step, out / "all")]
    (out / "all.md").write_text("\n".join(lines) + "\n")
    summary = {"benchmark": "all", "size": size, "when": when, "machine": mach,
               "goals": [{"goal": g, "value": v, "unit": u, "met": v is not None and m(v)}
                         for g, v, u, m in headline(results)],
               "steps": {k: {f: v for f, v in r.items() if f != "data"} for k, r in results.items()}}
    (out / "all.json").write_text(json.dumps(summary, indent=2) + "\n")
    return out / "all.md"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("full", "quick"), default="full",
                        help="full: about 30 minutes on this machine; quick: about 10")
    parser.add_argument("--only", default="", help="comma-separated steps (default: all): " +
                        ",".join(s.name for s in STEPS))
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--report-only", action="store_true", help="run nothing: rebuild the report from the "
                        "previous run's results")
    args = parser.parse_args(argv)
    only = set() if args.report_only else ({x.strip() for x in args.only.split(",") if x.strip()}
                                           or {s.name for s in STEPS})
    unknown = only - {s.name for s in STEPS}
    if unknown:
        parser.error(f"unknown step(s): {', '.join(sorted(unknown))}")
    results = {s.name: run_step(s, args.size, args.out / "all") for s in STEPS if s.name in only}
    results = {**earlier_results(args.out, exclude=set(results)), **results}
    plots = [p for p in (plot_throughput(results, args.out), plot_freshness(results, args.out),
                         plot_reads(results, args.out)) if p]
    print(write_report(args.out, args.size, results, plots).read_text())


if __name__ == "__main__":
    main()
