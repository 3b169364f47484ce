"""recstream side by side with the ways a user would otherwise build each part, in one run, as ratios.

``python -m bench.peers_bench [--quick]`` (``recstream bench peers``) starts its own redis-server and measures:

1. **writes** (:mod:`bench.peers_writes`): the same synthetic events (no duplicates, no late deliveries)
   written by naive per-event Redis commands — one round trip per command, one pipeline per event, one
   pipeline per 500 events — and by recstream's ``IngestStage`` (join disabled); events/s, Redis commands
   (``INFO commandstats``, inside Lua included), Redis CPU (``INFO cpu``) and bytes sent per event; every
   path interleaved over ``--rounds``; both sides' features are then compared.
2. **learning** (:mod:`bench.peers_learning`): the trainer's model with its sparse update vs dense tables +
   ``torch.optim.Adam``, the same batches interleaved; samples/s, optimizer state, publish bytes.
3. **reads** (:mod:`bench.peers_reads`): a Feast-style layout (one hash per entity per view, ``HMGET``s
   pipelined per request) vs ``FeatureClient.request_features``, 1 user + 200 / 1,000 candidates; p50 / p99,
   round trips, commands and Redis CPU per request, answers compared.

Peers measured by other benchmarks (rbloom / pybloom-live, Faust windowed tables) are quoted from their
``bench/results/*.json``. Writes ``peers.json`` / ``peers.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import private_redis, write_results
from bench.peers_learning import run_learning
from bench.peers_reads import run_reads
from bench.peers_writes import WRITE_PATHS, compare, make_workload, run_writes

QUICK = {"events": 2_000, "rounds": 1, "command_events": 500, "requests": 50, "candidates": [200],
         "rows": [10_000], "steps": 4}
FULL = {"events": 20_000, "rounds": 3, "command_events": 3_000, "requests": 200, "candidates": [200, 1000],
        "rows": [100_000, 1_000_000], "steps": 20}
RESULTS = Path(__file__).parent / "results"
"""Where the other benchmarks' results are read from (the peers they measured)."""
WRITE_LABELS = {"recstream": "recstream IngestStage (UserBatchWriter + EntityBatchWriter)",
                "naive-batch": "naive commands, one pipeline per 500 events",
                "naive-event": "naive commands, one pipeline per event",
                "naive-command": "naive commands, one round trip per command"}


def _x(value: float, base: float) -> str:
    return f"{value / base:.3g}" if base else "–"


def _median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def writes_table(res: dict[str, Any]) -> list[list[str]]:
    """Peer 1: medians over the rounds, ratios to recstream's medians."""
    runs = res["runs"]
    base = {k: _median(runs["recstream"], k) for k in runs["recstream"][0]}
    rows = [["write path", "events/s", "× recstream", "Redis commands / event", "× recstream",
             "Redis CPU µs / event", "× recstream", "bytes to Redis / event", "round trips / event"]]
    trips = {"recstream": f"≪ 1 ({base['script_calls_per_event']:.3f} Lua calls, pipelined per batch)",
             "naive-batch": "1/500",
             "naive-event": "1"}
    for path, label in WRITE_LABELS.items():
        m = {k: _median(runs[path], k) for k in runs[path][0]}
        rows.append([label, f"{m['events_per_s']:,.0f}", _x(m["events_per_s"], base["events_per_s"]),
                     f"{m['commands_per_event']:.2f}", _x(m["commands_per_event"], base["commands_per_event"]),
                     f"{m['redis_cpu_us_per_event']:.1f}", _x(m["redis_cpu_us_per_event"],
                                                              base["redis_cpu_us_per_event"]),
                     f"{m['net_in_bytes_per_event']:,.0f}",
                     trips.get(path, f"{m['commands_per_event']:.2f}")])
    return rows


def learning_table(res: dict[str, Any]) -> list[list[str]]:
    """Peer 2: one block of rows per table size."""
    rows = [["table rows (users = items)", "update", "samples/s", "× recstream", "optimizer state MB", "× recstream",
             "rows changed in publish window", "publish MB (changed rows)", "× recstream", "whole tables MB"]]
    for size in res.values():
        sides = list(size["sides"].items())
        base = sides[0][1]
        for name, s in sides:
            changed = s["rows_changed_in_window"]
            rows.append([f"{size['rows']:,}", name, f"{s['samples_per_s']:,.0f}",
                         _x(s["samples_per_s"], base["samples_per_s"]), f"{s['optimizer_state_bytes'] / 1e6:,.1f}",
                         _x(s["optimizer_state_bytes"], base["optimizer_state_bytes"]),
                         f"{changed['users'] + changed['items']:,}", f"{s['publish_bytes'] / 1e6:,.2f}",
                         _x(s["publish_bytes"], base["publish_bytes"]), f"{size['whole_tables_bytes'] / 1e6:,.1f}"])
    return rows


def reads_table(res: dict[str, Any]) -> list[list[str]]:
    """Peer 3: one block of rows per candidate count."""
    rows = [["candidates", "read path", "p50 ms", "p99 ms", "p50 × recstream", "p99 × recstream", "round trips",
             "Redis commands / request", "Redis CPU µs / request", "× recstream", "answers = recstream's"]]
    for size, block in res["sizes"].items():
        base = block["paths"]["recstream"]
        equal, asked = block["equal_answers"]
        for name, p in block["paths"].items():
            rows.append([size, name, f"{p['p50_us'] / 1000:.2f}", f"{p['p99_us'] / 1000:.2f}",
                         _x(p["p50_us"], base["p50_us"]), _x(p["p99_us"], base["p99_us"]), str(p["round_trips"]),
                         f"{p['commands']:.1f}", f"{p['redis_cpu_us']:,.0f}",
                         _x(p["redis_cpu_us"], base["redis_cpu_us"]),
                         f"{equal}/{asked}" if name.startswith("feast") else ""])
    return rows


def already_measured(results_dir: Path = RESULTS) -> list[str]:
    """One line per peer measured by another benchmark, from its results JSON (if present)."""
    lines = []
    bloom_path, stats_path = results_dir / "bloom.json", results_dir / "stats.json"
    if bloom_path.exists():
        bloom = json.loads(bloom_path.read_text())
        for name, impl in bloom.get("implementations", {}).items():
            if name.startswith(("rbloom", "pybloom")):
                lines.append(f"- exposure filter, {name}: compute {impl['compute_vs_recstream']:.0f}× recstream's "
                             f"(1,000 candidates × 31 slices), e2e p50 {impl['e2e']['p50_us']:,.0f} µs vs "
                             f"{bloom['implementations']['recstream']['e2e']['p50_us']:,.0f} µs "
                             f"([bloom.md](bloom.md), {bloom['when']})")
    if stats_path.exists():
        stats = json.loads(stats_path.read_text())
        r = stats.get("ratios", {})
        if r:
            lines.append(f"- windowed statistics, Faust {stats.get('ratios_vs', 'hopping')} windowed tables: "
                         f"recstream {r['eps_recstream_over_faust']:.0f}× the events/s, "
                         f"{r['state_bytes_recstream_over_faust']:.3f}× the state bytes "
                         f"([stats.md](stats.md), {stats['when']})")
    return lines or ["- (no bloom.json / stats.json in this results directory)"]


def run(cfg: dict[str, Any]) -> dict[str, Any]:
    """All three peers, on one private redis-server (join disabled: features only)."""
    load_before, started = os.getloadavg()[0], time.perf_counter()
    workload = make_workload(cfg["events"])
    with private_redis(None, join={"enabled": False}) as (client, settings):
        writes = run_writes(client, settings, workload.events, cfg["rounds"], WRITE_PATHS, cfg["command_events"])
        check = compare(client, settings, workload.events, limit=300)
        users = sorted({ev.user_id for ev in workload.events})
        reads = run_reads(client, settings, users, workload.items, cfg["candidates"], cfg["requests"])
    learning = run_learning(cfg["rows"], cfg["steps"])
    return {"config": cfg, "writes": {"events": len(workload.events), "users": len(users), "runs": writes,
                                      "features_equal": check},
            "learning": learning, "reads": reads, "bench_wall_s": round(time.perf_counter() - started, 1),
            "loadavg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)]}


def _notes(res: dict[str, Any]) -> list[str]:
    w, eq = res["writes"], res["writes"]["features_equal"]
    cfg = res["config"]
    before, after = res["loadavg_1m"]
    return [
        "", f"Writes (table above): {w['events']:,} events of {w['users']:,} users over 2 days, "
        f"{cfg['rounds']} interleaved round(s) "
        f"(naive one-round-trip-per-command: the first {cfg['command_events']:,} events). Same features "
        f"afterwards: last-N of {eq['last_n_users'][0]}/{eq['last_n_users'][1]} users equal "
        f"({eq['last_n_entries']:,} entries), windowed counts {eq['stats_cells'][0]:,}/{eq['stats_cells'][1]:,} "
        f"cells equal, impressions seen by both filters {eq['exposure_seen_by_both'][0]:,}/"
        f"{eq['exposure_seen_by_both'][1]:,}.", "",
        "## Learning: dense torch Adam vs the sparse update", "",
        *_lines(learning_table(res["learning"])), "",
        f"Batch {next(iter(res['learning'].values()))['batch']:,} positives (histories of 0–50 items), "
        f"{cfg['steps']} timed steps per side after 2 warm-up steps, alternating; the publish window is the "
        "last half of the steps (rows whose float64 row sum changed).", "",
        "## Reads: Feast-style per-entity hashes vs request_features", "",
        *_lines(reads_table(res["reads"])), "",
        f"{res['reads']['requests']} requests per candidate count, paths interleaved in blocks of "
        f"{res['reads']['block']}; Feast-style hashes hold {res['reads']['fields_per_stats_hash']} float64 "
        "fields per statistics view (4 windows × 17 features), materialized from recstream's features at the "
        "same read time; recstream + unseen mask has no Feast-style equivalent.", "",
        "## Notes", "",
        "* Writes: the naive writer does less than recstream — no dedup of redeliveries, no replay guard, one "
        "Bloom bitmap per user instead of time slices — so the comparison favours it; recstream's commands "
        "include those its Lua scripts run (`INFO commandstats` counts them). The events carry no duplicates and "
        "no late deliveries, so both sides must hold the same features (checked, above).",
        "* Learning: both sides are the trainer's `TwoTower` from the same seed on the same batches (equal first "
        "loss); recstream's incremental mode freezes the towers and updates only the rows a step used, dense "
        "Adam moves every row it ever touched (its moments stay non-zero), so its publish grows towards the "
        "whole tables the longer it runs.",
        f"* Reads: each Feast-style `HMGET` looks up {res['reads']['fields_per_stats_hash']} fields in a "
        f"{res['reads']['stats_hash_encoding']}-encoded hash; recstream reads one tile blob per entity (`MGET`) "
        "and computes the windows and features at read time. A Feast store holds values as of its last "
        "materialization; here they were materialized at the read time, so both answer the same.", "",
        "## Already measured elsewhere", "", *already_measured(), "",
        f"Whole bench {res['bench_wall_s']:.0f} s; machine load average 1m before / after: {before} / {after} "
        "(2 shared CPUs: read the ratios, not the absolutes).", ""]


def _lines(table: list[list[str]]) -> list[str]:
    header, *rows = table
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a minute)")
    parser.add_argument("--events", type=int, help=f"events of the write peer (default {FULL['events']:,})")
    parser.add_argument("--rounds", type=int, help=f"interleaved write rounds (default {FULL['rounds']})")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    cfg = dict(QUICK if args.quick else FULL)
    cfg.update({k: v for k, v in (("events", args.events), ("rounds", args.rounds)) if v is not None})
    res = run(cfg)
    md = write_results(args.out, "peers", res, writes_table(res["writes"]))
    with md.open("a") as f:
        f.write("\n".join(_notes(res)))
    print(md.read_text())


if __name__ == "__main__":
    main()
