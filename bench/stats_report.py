"""The markdown table and notes of ``bench.stats_bench``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from infra.settings import Settings


def _mib(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:,.1f} MiB"


def build_table(rec: dict[str, Any], faust: dict[str, dict[str, Any]], checks: dict[str, Any]) -> list[list[str]]:
    """The markdown table: one row per metric; recstream, then each Faust mode and the ratio to it."""
    header = ["metric", "recstream worker (tiles in Redis)"]
    for mode in faust:
        header += [f"Faust {mode} tables", f"recstream ÷ Faust {mode}"]
    n = rec["timed_events"]
    rec_growth = rec["worker_peak_rss_kb"] - rec["worker_rss_after_warmup_kb"]
    rec_total = rec["worker_peak_rss_kb"] * 1024 + rec["redis_used_memory_delta"]
    Cell = Callable[[dict[str, Any]], tuple[str, float, float]]
    rows: list[tuple[str, str, Cell]] = [
        ("events/s (same N events)", f"{rec['eps']:,.0f}", lambda f: (f"{f['eps']:,.0f}", rec["eps"], f["eps"])),
        ("CPU ms per event: process + Redis + Kafka broker",
         " + ".join(f"{1000 * rec[k] / n:.2f}" for k in ("worker_cpu_s", "redis_cpu_s", "broker_cpu_s")),
         lambda f: (f"{1000 * f['cpu_timed_s'] / n:.2f} + — + {1000 * f['broker_cpu_s'] / n:.2f}",
                    rec["worker_cpu_s"] + rec["redis_cpu_s"] + rec["broker_cpu_s"],
                    f["cpu_timed_s"] + f["broker_cpu_s"])),
        ("statistics state bytes (st keys' MEMORY USAGE / tables' deep size)", _mib(rec["stats_bytes"]),
         lambda f: (_mib(f["table_bytes"]), rec["stats_bytes"], f["table_bytes"])),
        ("statistics state keys", f"{rec['stats_keys']:,}",
         lambda f: (f"{f['table_keys']:,}", rec["stats_keys"], f["table_keys"])),
        ("process peak RSS", _mib(rec["worker_peak_rss_kb"] * 1024),
         lambda f: (_mib(f["maxrss_kb"] * 1024), rec["worker_peak_rss_kb"], f["maxrss_kb"])),
        ("process RSS growth while timed", _mib(rec_growth * 1024),
         lambda f: (_mib((f["maxrss_kb"] - f["rss_first_event_kb"]) * 1024), rec_growth,
                    f["maxrss_kb"] - f["rss_first_event_kb"])),
        ("Redis used_memory delta (all features)", _mib(rec["redis_used_memory_delta"]),
         lambda f: ("—", 0.0, 0.0)),
        ("total: peak RSS + Redis delta", _mib(rec_total),
         lambda f: (_mib(f["maxrss_kb"] * 1024), rec_total, f["maxrss_kb"] * 1024)),
        ("Kafka messages written: repartition topics", f"{rec['repartition_records']:,}",
         lambda f: (f"{f['repartition_records']:,}", rec["repartition_records"], f["repartition_records"])),
        ("Kafka messages written: changelogs (state)", "0",
         lambda f: (f"{f['changelog_records']:,}", 0.0, 0.0)),
    ]
    table = [header]
    for name, rec_cell, faust_cell in rows:
        row = [name, rec_cell]
        for f in faust.values():
            cell, a, b = faust_cell(f)
            row += [cell, f"{a / b:.3g}" if b else "—"]
        table.append(row)
    rc = checks["recstream"]
    check_row = ["sampled counts = brute-force reference", f"{rc['recstream_eq_reference_dedup']}/{rc['cells']} "
                 "(with dedup)"]
    for mode in faust:
        c = checks["faust"][mode]
        agree = f"{c['recstream_eq_faust']}/{c['cells']} cells equal" if "recstream_eq_faust" in c else (
            "other windows")
        check_row += [f"{c['faust_eq_reference_raw']}/{c['cells']} (no dedup)", agree]
    table.append(check_row)
    if rec["extra_events"]:
        row = [f"recstream events/s, {rec['extra_events']:,} more events (throughput reference)",
               f"{rec['extra_eps']:,.0f}"]
        for f in faust.values():
            row += ["", f"{rec['extra_eps'] / f['eps']:.3g}"]
        table.append(row)
    return table


def notes_for(
    settings: Settings, days: float, duplicates: int, rec: dict[str, Any], faust: dict[str, dict[str, Any]],
    checks: dict[str, Any],
) -> list[str]:
    windows = ", ".join(f"{w} step {t}" for w, t in settings.stats.windows.items())
    lateness_h = settings.stats.allowed_lateness_ms / 3_600_000
    notes = [
        "recstream: `recstream worker` with every feature on (Bloom, last-N, user / user×category, item "
        "and author tiles), batched records and one Lua call per Redis shard per batch; events/s from the "
        "first produced event until the consumer group caught up. That includes up to 1 s of commit "
        "interval, a large share at small N; the last row times more events on the same worker.",
        f"Faust: one `memory://` windowed table per window, hopping ({windows}) so that the window starting "
        "at E − W is exactly recstream's [E − W, E) at a tile-aligned E: each increment touches W / step "
        "windows (73 per entity per event), each with its own changelog record. Tumbling (if shown) keeps "
        "one bucket per window: cheaper, but it answers \"this calendar bucket so far\", not \"the last W\". "
        f"expires = W + {lateness_h:g} h (the rings' retention).",
        "Faust event time: `relative_to(callable)` reading `Event.ts` (ms → s): what `relative_to_field` "
        "does, but the value is the msgspec `Event` from `filters.events.decode_event` (a registered Faust "
        "codec), not a `faust.Record` with a field descriptor.",
        "Faust expires windows by the wall clock (`window.stale(ts, time.time())`, notes §3.3), so the "
        f"events span the {days:g} days ending now; with historical timestamps every window would be "
        "dropped at the first table cleanup (every 30 s). recstream expires by event time. (Seen in a "
        "trial run whose events ended 14 h before the wall clock: every Faust 1h cell read 0, recstream's "
        "were right.)",
        "Repartitioning on the Faust side: user and user×category are counted on the user-keyed topic; each "
        "event goes through internal by-item / by-author topics (`await topic.send`, what `group_by` does) "
        "whose agents count item / author. recstream needs no repartition topic: its user-keyed stage "
        "applies item and author tiles directly, guarded per source partition (docs/architecture.md).",
        "Faust agents iterate event by event (a table write takes its changelog partition from "
        "`current_event()`). Every table write queues a changelog record; above 100 queued records Faust "
        "blocks the stream until the buffer drains (`producer buffer full` warnings), so Faust's rate is "
        "bound by producing changelog records one by one, at Faust's defaults (no producer tuning).",
        f"Counts: recstream drops duplicate deliveries (same event_id; {duplicates} in this run) and events "
        "behind the watermark; Faust does neither (and would count replays again after a crash). So "
        "recstream is compared with a brute-force reference *with* dedup, Faust with one *without*; a "
        "recstream ≠ Faust cell is explained when each side equals its own reference.",
        f"recstream counts read with {rec['reader']}.",
        "Memory: recstream's statistics live in Redis (the st keys' MEMORY USAGE; the used_memory delta also "
        "holds Bloom filters, last-N, dedup sets and guards: "
        + ", ".join(f"{k} {_mib(v['bytes'])}" for k, v in sorted(rec["redis_keys"].items()))
        + "); the worker RSS is process overhead. Faust's state lives in its process (table dicts and "
        "per-partition expiry heaps, deep-size estimate) and is copied to Kafka changelog topics.",
        "CPU: the worker's /proc stat, Redis `INFO cpu` and the broker's /proc stat over the timed part "
        "(the broker's share includes receiving the produced events); Faust: getrusage from its first "
        "event to the end, the broker over the subprocess's whole life (startup included, events "
        "already produced).",
        "Both sides run one after the other on the same broker and Redis, never sharing the 2 CPUs; Faust "
        "reads a copy of the same events (its own topic, same partitions), recstream is timed against a "
        "live producer.",
    ]
    for mode, c in checks["faust"].items():
        text = (f"Check, Faust {mode}: {c['cells']} cells (kind × entity × window × type); Faust = reference "
                f"without dedup in {c['faust_eq_reference_raw']}")
        if "recstream_eq_faust" in c:
            text += (f"; recstream = Faust in {c['recstream_eq_faust']}, the other "
                     f"{c['cells'] - c['recstream_eq_faust']} differ by duplicates only in "
                     f"{c['differences_explained_by_duplicates']}")
        notes.append(text + ".")
    for mode, f in faust.items():
        notes.append(f"Faust {mode}: {f['changelog_records']:,} changelog records, "
                     f"{f['repartition_records']:,} repartition records, {f['table_keys']:,} table keys, "
                     f"{f['elapsed_s']:.0f} s for {f['timed'] + 1:,} events.")
    return notes
