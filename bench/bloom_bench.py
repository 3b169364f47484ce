"""Exposure filter benchmark: recstream's sliced Bloom filters vs rbloom and pybloom-live, same data and run.

    .venv/bin/python -m bench.bloom_bench --out bench/results [--redis-url redis://...] [--quick]

One user at design load (200 distinct impressions per day, 31 live daily slices at δ = 1 %), 1,000
candidates (10 % of them exposed). For every implementation the 31 slice filters are stored in Redis and
fetched in one round trip per query:

* recstream: ``ExposureReader.filter_unseen`` (read Lua script + compiled hash and bit-transposed test);
* recstream-loop: the same bytes, but tested slice by slice in numpy (what the compiled transposed test saves);
* rbloom (hash_func = mmh3 128-bit, so it can be serialised): MGET + ``Bloom.load_bytes`` + ``in``;
* pybloom-live: MGET + ``BloomFilter.fromfile`` + ``in``.

Reported: compute µs per query (everything but the round trip), end-to-end p50/p99 with Redis on
loopback, bits per item against the optimum for the slice budget, measured per-query FPR (all 31 slices;
1M non-members for recstream, 100k for the slower baselines), and ratios (the machine is shared).
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mmh3
import numpy as np
import pybloom_live
import rbloom

from bench.common import private_redis
from filters.bloom import HASH_SEEDS, item_hashes, optimal_bits, positions
from filters.slices import SlicePlan
from infra.settings import MS_PER_DAY, Settings
from serving.exposure import ExposureReader, seen_in_reply
from stream.exposure_writer import ExposureWriter

T0 = 1_780_000_000_000 // MS_PER_DAY * MS_PER_DAY
DAYS = 31
PER_DAY = 200
CANDIDATES = 1000


def rb_hash(item: str) -> int:
    return int(mmh3.hash128(item, 42, signed=True))


def timed(fn: Callable[[], Any], reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def pct(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)

    def pick(q: float) -> float:
        return s[min(len(s) - 1, int(q * len(s)))] * 1e6

    return {"p50_us": pick(0.5), "p99_us": pick(0.99), "median_us": statistics.median(s) * 1e6}


def run(url: str | None, quick: bool) -> dict[str, Any]:
    settings = Settings()
    plan = SlicePlan.from_settings(settings.bloom)
    p0 = plan.sub(0)
    reps = 200 if quick else 2000
    nonmembers = 100_000 if quick else 1_000_000
    members = [[f"seen-{d}-{j}" for j in range(PER_DAY)] for d in range(DAYS)]
    flat = [i for day in members for i in day]
    cands = [f"seen-{(7 * j) % DAYS}-{j % PER_DAY}" if j % 10 == 0 else f"cand-{j}"
             for j in range(CANDIDATES)]
    at = T0 + (DAYS - 1) * MS_PER_DAY + 3_600_000
    out: dict[str, Any] = {"setup": {
        "fpr": settings.bloom.fpr, "live_slices": plan.live_slices, "slice_fpr": plan.slice_fpr,
        "per_slice_items": PER_DAY, "candidates": CANDIDATES, "exposed_share": 0.1, "reps": reps,
        "sub0": {"m": p0.m, "k": p0.k, "capacity": p0.capacity, "fpr": p0.fpr},
    }}
    optimum = optimal_bits(PER_DAY, plan.slice_fpr) / PER_DAY
    impls: dict[str, dict[str, Any]] = {}

    with private_redis(url) as (r, _redis_settings):
        user = "bench-user"
        for k in r.scan_iter("rs1:{u:bench-*"):
            r.delete(k)
        writer = ExposureWriter(r, settings)
        t = time.perf_counter()
        for d in range(DAYS):
            day = T0 + d * MS_PER_DAY
            writer.add({user: [(i, day + j) for j, i in enumerate(members[d])]}, day)
        write_s = time.perf_counter() - t
        reader = ExposureReader(r, settings)
        reply = reader.live_bitmaps(user, at)
        assert len(reply) // 2 == DAYS, len(reply)

        def no_false_negative(unseen: list[str]) -> bool:
            return not any(c.startswith("seen-") for c in unseen)

        # --- recstream -------------------------------------------------------------------------
        got = reader.filter_unseen(user, cands, at)
        assert no_false_negative(got), "false negative"
        compute = timed(lambda: reader.filter_unseen_in_reply(reply, cands), reps)
        e2e = timed(lambda: reader.filter_unseen(user, cands, at), reps)
        fetch = timed(lambda: reader.live_bitmaps(user, at), reps)
        probes = [f"nonmember-{j}" for j in range(nonmembers)]
        fpr = float(seen_in_reply(reply, probes, observe=False).mean())
        mem = sum(int(r.memory_usage(k) or 0) for k in r.scan_iter(f"rs1:{{u:{user}}}*"))
        bitmap_bytes = DAYS * p0.nbytes
        month = (optimal_bits(PER_DAY * 30, settings.bloom.fpr) + 7) // 8
        impls["recstream"] = {
            "compute": pct(compute), "e2e": pct(e2e), "fetch": pct(fetch),
            "bits_per_item": 8 * p0.nbytes / PER_DAY, "fpr": fpr, "fpr_probes": nonmembers,
        }
        out["memory"] = {
            "bitmap_bytes_per_user": bitmap_bytes, "redis_bytes_per_user": mem,
            "month_filter_bytes": month, "ratio_bitmaps": bitmap_bytes / month, "ratio_redis": mem / month,
            "by_slice_hours": {
                h: SlicePlan(0.01, h * 3_600_000, 30 * MS_PER_DAY, PER_DAY * h // 24).memory_ratio()
                for h in (24, 48, 72, 120, 168)
            },
        }
        out["writes"] = {"impressions": len(flat), "seconds": write_s, "per_s": len(flat) / write_s}

        # 10x load: FPR must stay within budget (bytes built through Redis)
        heavy = "bench-heavy"
        for d in range(DAYS):
            writer.add({heavy: [(f"h-{d}-{j}", T0 + d * MS_PER_DAY + j) for j in range(10 * PER_DAY)]},
                       T0 + d * MS_PER_DAY)
        heavy_reply = reader.live_bitmaps(heavy, at)
        out["heavy_10x"] = {
            "bitmaps": len(heavy_reply) // 2,
            "fpr": float(seen_in_reply(heavy_reply, probes, observe=False).mean()),
            "fpr_probes": nonmembers,
            "compute": pct(timed(lambda: reader.filter_unseen_in_reply(heavy_reply, cands), reps // 4)),
        }

        # --- recstream, slice by slice (no transposition) --------------------------------------
        def loop_check() -> list[str]:
            pos = positions(item_hashes(cands), p0.m, p0.k)
            seen = np.zeros(len(cands), dtype=bool)
            for bm in reply[1::2]:
                seen |= np.unpackbits(np.frombuffer(bm, np.uint8))[pos].all(axis=0)
            return list(itertools.compress(cands, (~seen).tolist()))

        assert no_false_negative(loop_check())
        impls["recstream-loop"] = {"compute": pct(timed(loop_check, max(20, reps // 10))),
                                   "bits_per_item": 8 * p0.nbytes / PER_DAY}

        # --- rbloom ----------------------------------------------------------------------------
        rb_keys = [f"bench:rbloom:{d}" for d in range(DAYS)]
        for d in range(DAYS):
            b = rbloom.Bloom(PER_DAY, p0.fpr, rb_hash)
            b.update(members[d])
            r.set(rb_keys[d], b.save_bytes())
        rb_bits = rbloom.Bloom(PER_DAY, p0.fpr, rb_hash).size_in_bits

        def rb_query(blobs: list[Any] | None = None) -> list[str]:
            data: list[Any] = blobs if blobs is not None else r.mget(rb_keys)
            fs = [rbloom.Bloom.load_bytes(x, rb_hash) for x in data]
            return [c for c in cands if not any(c in f for f in fs)]

        blobs: list[Any] = r.mget(rb_keys)
        assert no_false_negative(rb_query(blobs))
        n_rb = max(10, reps // 20)
        fs = [rbloom.Bloom.load_bytes(x, rb_hash) for x in blobs]
        base_probes = probes[:100_000]
        impls["rbloom (mmh3)"] = {
            "compute": pct(timed(lambda: rb_query(blobs), n_rb)), "e2e": pct(timed(rb_query, n_rb)),
            "bits_per_item": rb_bits / PER_DAY,
            "fpr": sum(any(p in f for f in fs) for p in base_probes) / len(base_probes),
            "fpr_probes": len(base_probes),
        }

        # --- pybloom-live ----------------------------------------------------------------------
        pb_keys = [f"bench:pybloom:{d}" for d in range(DAYS)]
        for d in range(DAYS):
            b = pybloom_live.BloomFilter(PER_DAY, p0.fpr)
            for i in members[d]:
                b.add(i)
            buf = io.BytesIO()
            b.tofile(buf)
            r.set(pb_keys[d], buf.getvalue())
        pb_bits = pybloom_live.BloomFilter(PER_DAY, p0.fpr).num_bits

        def pb_query(blobs: list[Any] | None = None) -> list[str]:
            data: list[Any] = blobs if blobs is not None else r.mget(pb_keys)
            fs = [pybloom_live.BloomFilter.fromfile(io.BytesIO(x)) for x in data]
            return [c for c in cands if not any(c in f for f in fs)]

        pblobs: list[Any] = r.mget(pb_keys)
        assert no_false_negative(pb_query(pblobs))
        n_pb = max(5, reps // 100)
        pfs = [pybloom_live.BloomFilter.fromfile(io.BytesIO(x)) for x in pblobs]
        impls["pybloom-live"] = {
            "compute": pct(timed(lambda: pb_query(pblobs), n_pb)), "e2e": pct(timed(pb_query, n_pb)),
            "bits_per_item": pb_bits / PER_DAY,
            "fpr": sum(any(p in f for f in pfs) for p in base_probes[:20_000]) / 20_000,
            "fpr_probes": 20_000,
        }
        for k in itertools.chain(rb_keys, pb_keys):
            r.delete(k)
        for k in r.scan_iter("rs1:{u:bench-*"):
            r.delete(k)

    # calibration in this run: our batch hash vs one mmh3 call per candidate (what rbloom pays too)
    floor = pct(timed(lambda: item_hashes(cands), reps))["median_us"]
    seed = HASH_SEEDS[settings.bloom.hash_version]
    per_call = pct(timed(lambda: b"".join(map(mmh3.hash_bytes, cands, itertools.repeat(seed))), reps))
    ours = impls["recstream"]["compute"]["median_us"]
    for v in impls.values():
        v["bits_vs_optimum"] = v["bits_per_item"] / optimum
        v["compute_vs_recstream"] = v["compute"]["median_us"] / ours
    out["optimum_bits_per_item"] = optimum
    out["hash_floor_us"] = floor
    out["mmh3_per_call_us"] = per_call["median_us"]
    out["compute_vs_hash_floor"] = ours / floor
    out["implementations"] = impls
    out["goals"] = goals(impls["recstream"], out["heavy_10x"], settings.bloom.fpr)
    return out


def goals(ours: dict[str, Any], heavy: dict[str, Any], fpr: float) -> list[dict[str, Any]]:
    """The issue's goals with this run's values (the machine is shared: re-run before concluding)."""
    rows = [
        ("compute, 1,000 candidates × 31 slices (median)", ours["compute"]["median_us"], 100.0, "µs"),
        ("end-to-end p99, Redis on loopback", ours["e2e"]["p99_us"], 1500.0, "µs"),
        ("bits vs optimum", ours["bits_vs_optimum"], 1.02, "×"),
        ("query FPR at design load", ours["fpr"], 1.1 * fpr, ""),
        ("query FPR at 10× daily load", heavy["fpr"], 1.1 * fpr, ""),
    ]
    return [{"goal": g, "value": v, "limit": lim, "unit": u, "met": v <= lim} for g, v, lim, u in rows]


def table(res: dict[str, Any]) -> list[list[str]]:
    rows = [["implementation", "compute µs (median)", "× recstream", "e2e p50 µs", "e2e p99 µs",
             "bits/item", "× optimum", "query FPR (31 slices)"]]
    for name, v in res["implementations"].items():
        e2e = v.get("e2e")
        rows.append([
            name, f"{v['compute']['median_us']:,.0f}", f"{v['compute_vs_recstream']:.1f}",
            f"{e2e['p50_us']:,.0f}" if e2e else "–", f"{e2e['p99_us']:,.0f}" if e2e else "–",
            f"{v['bits_per_item']:.2f}", f"{v['bits_vs_optimum']:.3f}",
            f"{v['fpr']:.4f} ({v['fpr_probes']:,})" if "fpr" in v else "–",
        ])
    return rows


def markdown(res: dict[str, Any]) -> str:
    rows = table(res)
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    mem, heavy, s = res["memory"], res["heavy_10x"], res["setup"]
    fetch_p50 = res["implementations"]["recstream"]["fetch"]["p50_us"]
    by_hours = ", ".join(f"{h}: {v:.2f}" for h, v in mem["by_slice_hours"].items())
    return "\n".join([
        "# bloom", "",
        f"{res['when']}, {res['machine']['cpus']} CPUs, Python {res['machine']['python']}; "
        f"δ = {s['fpr']}, {s['live_slices']} live daily slices × {s['per_slice_items']} items, "
        f"{s['candidates']} candidates (10 % exposed), slice budget {s['slice_fpr']:.3g}, "
        f"sub-slice 0: m = {s['sub0']['m']}, k = {s['sub0']['k']}.", "",
        *lines, "",
        "| goal | this run | limit | met |", "|---|---|---|---|",
        *[f"| {g['goal']} | {g['value']:.4g} {g['unit']} | ≤ {g['limit']:.4g} {g['unit']} | "
          f"{'yes' if g['met'] else 'NO'} |" for g in res["goals"]], "",
        f"- recstream compute = {res['compute_vs_hash_floor']:.2f}× its own hashing step "
        f"({res['hash_floor_us']:.0f} µs for 1,000 candidates in one compiled MurmurHash3 loop; "
        f"1,000 mmh3 calls take {res['mmh3_per_call_us']:.0f} µs in the same run); "
        f"fetch alone (read script round trip) p50 {fetch_p50:.0f} µs.",
        f"- 10× load ({heavy['bitmaps']} bitmaps = 31 slices × sub-slices): query FPR {heavy['fpr']:.4f} "
        f"on {heavy['fpr_probes']:,} non-members, compute {heavy['compute']['median_us']:.0f} µs.",
        f"- Memory per design-load user: bitmaps {mem['bitmap_bytes_per_user']:,} B, all Redis keys "
        f"(MEMORY USAGE) {mem['redis_bytes_per_user']:,} B; one month-sized filter "
        f"{mem['month_filter_bytes']:,} B → ratio {mem['ratio_bitmaps']:.2f} (bitmaps), "
        f"{mem['ratio_redis']:.2f} (Redis). By slice length (hours: ratio): {by_hours}.",
        f"- Writes: {res['writes']['impressions']:,} impressions in {res['writes']['seconds']:.2f} s "
        f"({res['writes']['per_s']:,.0f}/s, one Lua call per user per day-batch).",
        "",
    ])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--redis-url", default=None)
    ap.add_argument("--quick", action="store_true", help="fewer repetitions and probes")
    args = ap.parse_args(argv)
    res = run(args.redis_url, args.quick)
    res = {"benchmark": "bloom", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                       "load_avg": os.getloadavg()}, **res}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bloom.json").write_text(json.dumps(res, indent=2) + "\n")
    md = markdown(res)
    (args.out / "bloom.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
