"""The report of ``recstream bench ingest``: ratios, goals, ``ingest.json`` and ``ingest.md``.

Raw aiokafka in the ratios and goals is the single-event ``getmany`` + decode loop, the ceiling of
``faust_throughput.md``; the table also gives each variant against the batched aiokafka loop.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bench.common import write_results

BASELINE_WORKER_EPS = 1_800.0
"""The full worker before batched records (events/s, this machine)."""
def _ratio(summary: dict[str, Any], num: str, den: str | float) -> float | None:
    a = summary.get(num, {}).get("median_eps")
    b = den if isinstance(den, float) else summary.get(den, {}).get("median_eps")
    return a / b if a and b else None


def ratios(summary: dict[str, Any]) -> dict[str, float | None]:
    pairs: list[tuple[str, str, str | float]] = [
        ("faust_batched_over_aiokafka", "faust-batched", "aiokafka-single"),
        ("faust_single_over_aiokafka", "faust-single", "aiokafka-single"),
        ("faust_batched_over_aiokafka_batched", "faust-batched", "aiokafka-batched"),
        ("faust_batched_over_faust_single", "faust-batched", "faust-single"),
        ("worker_1p_over_aiokafka", "worker-1p", "aiokafka-single"),
        ("worker_2p_over_aiokafka", "worker-2p", "aiokafka-single"),
        ("worker_1p_over_baseline", "worker-1p", BASELINE_WORKER_EPS),
        ("worker_2p_over_baseline", "worker-2p", BASELINE_WORKER_EPS),
        ("worker_2p_over_worker_1p", "worker-2p", "worker-1p"),
        ("worker_join_on_over_off", "worker-1p", "worker-1p-nojoin"),
        ("worker_gc_tuned_over_default", "worker-1p", "worker-1p-gc-default"),
        ("worker_within_005_over_02", "worker-1p", "worker-1p-within-0.2"),
        ("produce_batched_over_single", "produce-batched", "produce-single"),
    ]
    return {key: _ratio(summary, a, b) for key, a, b in pairs}


def goals(summary: dict[str, Any], rat: dict[str, float | None]) -> list[dict[str, Any]]:
    """The goals with this run's medians (raw aiokafka = the single-event getmany ceiling)."""
    rows = [("full worker, 1 process, batched", summary.get("worker-1p", {}).get("median_eps"), 15_000.0, "events/s"),
            ("full worker, 1 process, batched / raw aiokafka", rat["worker_1p_over_aiokafka"], 0.1, "×"),
            ("Faust pass-through, batched / raw aiokafka", rat["faust_batched_over_aiokafka"], 0.5, "×"),
            ("full worker, label join on / off (join costs ≤ 15 %)", rat["worker_join_on_over_off"], 0.85, "×")]
    return [{"goal": g, "value": v, "limit": lim, "unit": u, "met": v is not None and v >= lim}
            for g, v, lim, u in rows]


def _notes(runs: list[dict[str, Any]]) -> str:
    last: dict[str, Any] = next((r for r in reversed(runs) if "eps" in r), {})
    parts = []
    if "events_per_record" in last:
        parts.append(f"{last['records']:,} records, {last['events_per_record']:.1f} events/record")
    if "first_batch_events" in last:
        parts.append(f"{last['records']:,} records, first batch {last['first_batch_events']:,} events, "
                     f"{last['elapsed_s']:.2f} s timed")
    if last.get("invalid"):
        parts.append(f"{last['invalid']:,} invalid")
    if "dead_letters" in last:
        since = last.get("eps_from_assignment")
        parts.append(f"timed from the {last['start_signal']} until Redis applied every record, "
                     f"{last['elapsed_s']:.1f} s")
        if since:
            parts.append(f"{since:,.0f} events/s from the group's assignment")
        if last.get("eps_committed"):
            parts.append(f"{last['eps_committed']:,.0f} events/s until the offsets were committed")
        parts.append(f"{last['dead_letters']:,} dead letters, {last['redis_keys']:,} Redis keys")
    parts += [f"⚠ {r['warning']}" for r in runs if "warning" in r]
    parts += [f"**error**: {r['error']}" for r in runs if "error" in r]
    return "; ".join(parts)


def _fmt(v: float | None, spec: str = ",.0f") -> str:
    return "–" if v is None else format(v, spec)


def write_report(
    out_dir: Path, n: int, rounds: int, summary: dict[str, Any], labels: dict[str, str], code: dict[str, str]
) -> Path:
    """ingest.json and ingest.md: the variants table, the ratios, the goals and the machine line."""
    rat = ratios(summary)
    gls = goals(summary, rat)
    machine_line = (f"Machine: {os.cpu_count()} vCPU, shared; the Kafka broker and Redis run on it next to the "
                    f"consumers. {n:,} events, {rounds} round(s), medians.")
    results = {"events": n, "rounds": rounds, "baseline_worker_eps": BASELINE_WORKER_EPS,
               "variants": summary, "ratios": rat, "goals": gls, "machine_note": machine_line, "code": code}
    ref_s, ref_b = (summary.get(k, {}).get("median_eps") for k in ("aiokafka-single", "aiokafka-batched"))
    table = [["variant", "runs (events/s)", "median events/s", "× aiokafka single", "× aiokafka batched", "notes"]]
    for name, s in summary.items():
        med = s["median_eps"]
        table.append([f"{labels[name]} (`{name}`)", ", ".join(f"{x:,.0f}" for x in s["runs_eps"]) or "–",
                      _fmt(med), _fmt(med / ref_s if med and ref_s else None, ".3f"),
                      _fmt(med / ref_b if med and ref_b else None, ".3f"), _notes(s["runs"])])
    md = write_results(out_dir, "ingest", results, table)
    lines = ["", "| goal | this run | limit | met |", "|---|---|---|---|"]
    for g in gls:
        spec = ".3f" if g["unit"] == "×" else ",.0f"
        lines.append(f"| {g['goal']} | {_fmt(g['value'], spec)} {g['unit']} | ≥ {_fmt(g['limit'], spec)} {g['unit']} "
                     f"| {'✓' if g['met'] else '✗'} |")
    lines += ["", "| ratio (medians) | value |", "|---|---|"]
    lines += [f"| {k.replace('_', ' ')} | {_fmt(v, '.3f')} |" for k, v in rat.items()]
    lines += ["", f"Baseline full worker (before batched records): {BASELINE_WORKER_EPS:,.0f} events/s. Raw aiokafka "
              "in the goals and ratios = the single-event getmany + decode loop.", "", machine_line]
    if code["digest_before"] != code["digest_after"]:
        lines.append("**The worker's code (stream/, filters/, infra/) changed during this run**: runs of one variant "
                     "may have measured different code.")
    lines.append("")
    with md.open("a") as f:
        f.write("\n".join(lines))
    return md

