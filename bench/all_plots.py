"""The plots of ``recstream bench all`` (matplotlib, Agg): throughput, freshness under load, read latencies.

Each takes the steps' results (``{step: {"data": <its JSON> or None, ...}}``) and writes one PNG into the
output folder, returning its file name, or None when the step's data is missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after the backend

__all__ = ["plot_freshness", "plot_reads", "plot_throughput"]

FAMILIES = ("exposure", "last_n", "stats", "samples", "embeddings")


def _save(fig: Any, out: Path, name: str) -> str:
    out.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name


def plot_throughput(results: dict[str, dict[str, Any]], out: Path) -> str | None:
    """Events/s per ingest variant (median), with the 20k goal."""
    variants = ((results.get("ingest") or {}).get("data") or {}).get("variants") or {}
    named = [(k, v["median_eps"]) for k, v in variants.items() if v.get("median_eps")]
    if not named:
        return None
    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.barh([k for k, _ in named], [v for _, v in named], color="#4c72b0")
    ax.axvline(20_000, color="#c44e52", linestyle="--", label="goal: 20,000 events/s end to end")
    ax.set_xscale("log")
    ax.set_xlabel("events/s (median; log scale)")
    ax.legend(loc="lower right")
    ax.set_title("Throughput")
    return _save(fig, out, "all_throughput.png")


def plot_freshness(results: dict[str, dict[str, Any]], out: Path) -> str | None:
    """p50 (dashed) and p99 per family against the achieved load, with the 500 ms goal."""
    rows = ((results.get("freshness") or {}).get("data") or {}).get("rows") or []
    if not rows:
        return None
    rows = sorted(rows, key=lambda r: r["achieved_eps"])
    fig, ax = plt.subplots(figsize=(8, 4))
    for k, fam in enumerate(FAMILIES):
        pts = [(r["achieved_eps"], r["families"][fam]) for r in rows
               if fam in r["families"] and r["families"][fam]["probes"]]
        if not pts:
            continue
        color = f"C{k}"
        ax.plot([x for x, _ in pts], [f["p99_ms"] for _, f in pts], marker="o", color=color, label=f"{fam} p99")
        ax.plot([x for x, _ in pts], [f["p50_ms"] for _, f in pts], linestyle="--", color=color)
    ax.axhline(500, color="#c44e52", linestyle=":", label="goal p99 500 ms (at 5,000 ev/s)")
    ax.set_yscale("log")
    ax.set_xlabel("events/s achieved")
    ax.set_ylabel("produce → readable, ms (dashed: p50)")
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("Freshness under load")
    return _save(fig, out, "all_freshness.png")


def plot_reads(results: dict[str, dict[str, Any]], out: Path) -> str | None:
    """p50 / p99 of the read operations (reads, bloom end to end, request_features)."""
    bars: list[tuple[str, float, float]] = []
    latency = ((results.get("reads") or {}).get("data") or {}).get("latency") or {}
    bars += [(k, v["p50_us"] / 1000, v["p99_us"] / 1000) for k, v in latency.items()
             if not k.startswith(" ") and not any(w in k for w in ("write", "batch", "to_dicts"))]
    bloom = ((results.get("bloom") or {}).get("data") or {}).get("implementations", {}).get("recstream", {})
    if bloom.get("e2e"):
        bars.append(("filter_unseen 1,000 candidates", bloom["e2e"]["p50_us"] / 1000, bloom["e2e"]["p99_us"] / 1000))
    sync = ((results.get("serving") or {}).get("data") or {}).get("sync")
    if sync:
        bars.append(("request_features 1,000 candidates", sync["p50_us"] / 1000, sync["p99_us"] / 1000))
    if not bars:
        return None
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(bars) + 1.2))
    names = [b[0] for b in bars]
    ax.barh(names, [b[2] for b in bars], color="#dd8452", label="p99")
    ax.barh(names, [b[1] for b in bars], color="#4c72b0", label="p50")
    ax.set_xlabel("ms")
    ax.legend(loc="lower right")
    ax.set_title("Read latencies (Redis on loopback)")
    return _save(fig, out, "all_reads.png")
