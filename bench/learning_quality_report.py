"""The markdown of ``bench.learning_quality``: the main table and the sections after it (differences with
their intervals, goals, per-day metrics, setup)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["sections", "table"]


def _f(x: float | None, pct: bool = False) -> str:
    return "n/a" if x is None else f"{x:+.1%}" if pct else f"{x:.4f}"


def table(results: Mapping[str, Any], k: int) -> list[list[str]]:
    """One row per dataset and regime."""
    rows = [["dataset", "regime", "positives evaluated", f"recall@{k}", "MRR", "AUC", "impressions evaluated",
             "positives outside the catalogue", "mean catalogue size"]]
    for name, res in results.items():
        for regime, m in res.get("overall", {}).items():
            rows.append([name, regime, f"{m['positives']:,}", _f(m["recall@50"]), _f(m["mrr"]), _f(m["auc"]),
                         f"{m['impressions']:,}", f"{m['outside_catalogue']:.1%}", f"{m['catalogue']:,.0f}"])
    return rows


def sections(results: Mapping[str, Any], k: int, learning: Mapping[str, Any]) -> str:
    """Markdown after the main table: differences with intervals, goals, per-day metrics."""
    lines = ["", "## Differences (paired bootstrap, 95 % interval, n=1000, seed 0)", "",
             "| dataset | comparison | metric | difference | 95 % interval |", "|---|---|---|---|---|"]
    for name, res in results.items():
        for comparison, metrics in res.get("differences", {}).items():
            for metric, (d, lo, hi) in metrics.items():
                pct = metric.endswith("_rel")
                lines.append(f"| {name} | {comparison} | {metric} | {_f(d, pct)} | [{_f(lo, pct)}, {_f(hi, pct)}] |")
    lines += ["", "## Goals", "", "Stated by the issue for the drift stream (synthetic); informational on MIND.", "",
              "| dataset | goal | rule | met | strict |", "|---|---|---|---|---|"]
    for name, res in results.items():
        for g in res.get("goals", []):
            lines.append(f"| {name} | {g['goal']} | {g['rule']} | {'met' if g['met'] else 'MISSED'} | "
                         f"{'met' if g['strict'] else 'missed'} |")
    lines += ["", f"## Per day (popularity: recall@{k} of the {k} most clicked items so far, a reference)", "",
              f"| dataset | day | regime | positives | recall@{k} | MRR | AUC | outside catalogue | popularity |",
              "|---" * 9 + "|"]
    for name, res in results.items():
        for regime, days in res.get("per_day", {}).items():
            lines += [f"| {name} | {d['day']} | {regime} | {d['positives']:,} | {_f(d['recall@50'])} | {_f(d['mrr'])} "
                      f"| {_f(d['auc'])} | {d['outside_catalogue']:.1%} | "
                      f"{_f(res['reference']['per_day'][d['day']])} |" for d in days]
    lines += ["", "## Setup", "", f"Learner: defaults except {dict(learning)}; a chunk = batch_size positives; the "
              "catalogue is refreshed after every chunk; join and lateness: default settings."]
    skipped = [f"- {name}: {res['skipped']}" for name, res in results.items() if "skipped" in res]
    return "\n".join(lines + (["", "## Skipped", "", *skipped] if skipped else [])) + "\n"
