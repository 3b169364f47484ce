"""Learning quality of the online-learning recipe, prequentially (test, then train), over days of event time.

``python -m bench.learning_quality [--datasets synthetic,mind] [--data PATH] [--users N] [--items N]
[--days D] [--events N] [--seed S] [--out DIR]`` writes ``learning_quality.json`` / ``.md`` and one
``learning_quality_<dataset>.png`` per dataset. Offline, pure Python: no Kafka, no Redis.

Protocol, per dataset:

1. **Samples.** The events (synthetic with drifting interests, :mod:`recstream.generate`; or the MIND
   sample, :func:`recstream.sources.read_mind`, sorted by time) go through one
   :class:`filters.labels.PartitionJoin` in delivery order: first deliveries only, each with the
   watermark before it (newest ts so far − ``stats.allowed_lateness_ms``), category / author filled from
   the item metadata where the event lacks them; ``join.close`` after every chunk, ``close_open`` at the
   end. The samples are sorted by event time (a positive by ``ts``, an impression by ``impression_ts``)
   and split into UTC days.
2. **Nightly full model** of day d: a checkpoint copy of the full model of the previous day (day 0: a
   fresh random model) trained in full mode (whole network) on one shuffled epoch of day d's positives,
   as ``recstream full-update`` does.
3. **Prequential days.** Day 0 only trains the first full model. Every later day is cut into chunks of
   ``batch_size`` positives (with the impressions between them), the same chunks for every regime, so
   per-sample arrays are paired. Per chunk and regime: test first (rank each positive's item among the
   catalogue: recall@50 hit and reciprocal rank; score each impression), then train on the chunk's
   positives (regimes 2 and 3) and refresh the catalogue (every chunk). The regimes:

   - ``frozen``: the full model of day d−1, never trained during day d;
   - ``full+incremental`` (ours): a checkpoint copy of that same model in incremental mode (ID
     embeddings only, towers frozen), trained on day d's stream;
   - ``incremental``: one incremental chain from the day-0 full model, never restarted.
4. **Report.** Over all evaluated days: recall@50, MRR, AUC per regime; ours vs frozen and ours vs
   incremental with paired bootstrap 95 % intervals (relative recall@50 and MRR, absolute AUC; n=1000,
   seed 0); a plot of windowed recall@50 over event time and of AUC per day.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from bench.common import BAR, write_results
from bench.learning_quality_report import sections, table
from filters.events import Event, ItemMeta
from filters.labels import Arrival, JoinConfig, JoinOutput, PartitionJoin, Sample
from infra.settings import LearningSettings, Settings
from online_learning.bootstrap import paired_bootstrap, paired_bootstrap_auc
from online_learning.checkpoint import load_checkpoint, save_checkpoint
from online_learning.evaluation import auc, recall_at, reciprocal_rank
from online_learning.learner import Learner
from recstream.generate import GeneratorConfig, World, generate_events, generate_items
from recstream.sources import Rejects, mind_news_items, read_mind

FROZEN, OURS, INCREMENTAL = "frozen", "full+incremental", "incremental"
REGIMES = (FROZEN, OURS, INCREMENTAL)
K = 50
MS_PER_DAY = 86_400_000
SYNTHETIC_START_MS = 1_699_920_000_000  # 2023-11-14 00:00 UTC: generated days are UTC days
#: The learner settings changed from the defaults (sized to a few thousand positives a day).
LEARNING = {"batch_size": 128, "max_users": 50_000, "max_items": 50_000}
BOOTSTRAP_N, BOOTSTRAP_SEED = 1000, 0
#: Called with (regime, day number, chunk index, learner): at the start of each day (chunk -1), then after
#: each chunk is tested and trained.
Observer = Callable[[str, int, int, Learner], None]


def event_time(s: Sample) -> int:
    """The time a sample is tested at: a positive's click ``ts``, an impression's ``impression_ts``."""
    return s.ts if s.kind == "positive" else s.impression_ts


def day_name(day: int) -> str:
    return dt.datetime.fromtimestamp(day * MS_PER_DAY / 1000, dt.UTC).strftime("%Y-%m-%d")


# --- data ------------------------------------------------------------------------------------------
def join_samples(events: Iterable[Event], meta: Mapping[str, ItemMeta], cfg: JoinConfig, lateness_ms: int,
                 chunk: int = 20_000) -> list[Sample]:
    """Every sample of the label join over ``events`` (delivery order), sorted by event time."""
    join, samples, seen = PartitionJoin(cfg), [], set()
    top, arrivals = -1, list[Arrival]()

    def flush(close_all: bool = False) -> None:
        out = JoinOutput()
        join.add(arrivals, out)
        join.close(top - lateness_ms, out)
        if close_all:
            join.close_open(out)
        samples.extend(out.samples)
        arrivals.clear()

    for ev in events:
        watermark = top - lateness_ms if top >= 0 else -1
        top = max(top, ev.ts)
        if ev.event_id in seen:
            continue
        seen.add(ev.event_id)
        category, author = ev.category, ev.author_id
        if (category is None or author is None) and (m := meta.get(ev.item_id)) is not None:
            category, author = category or m.category, author or m.author_id
        arrivals.append(Arrival(ev, watermark, category, author))
        if len(arrivals) >= chunk:
            flush()
    flush(close_all=True)
    samples.sort(key=event_time)
    return samples


def split_days(samples: Iterable[Sample], end_ms: int | None = None) -> list[tuple[int, list[Sample]]]:
    """``(UTC day number, its samples in order)`` per day with samples, by event time, oldest day first;
    samples at or after ``end_ms`` (clicks after the end of a generated span) left out."""
    days: dict[int, list[Sample]] = {}
    for s in samples:
        if end_ms is None or event_time(s) < end_ms:
            days.setdefault(event_time(s) // MS_PER_DAY, []).append(s)
    return sorted(days.items())


def chunks(samples: Sequence[Sample], positives: int) -> Iterator[list[Sample]]:
    """Consecutive runs of samples holding ``positives`` positives each (the last one fewer)."""
    start, count = 0, 0
    for k, s in enumerate(samples):
        count += s.kind == "positive"
        if count == positives:
            yield list(samples[start:k + 1])
            start, count = k + 1, 0
    if start < len(samples):
        yield list(samples[start:])


# --- learners ----------------------------------------------------------------------------------------
def clone(learner: Learner, cfg: LearningSettings, tmp: Path, *, full: bool) -> Learner:
    """A copy of ``learner`` through a checkpoint (as the product restarts from one), catalogue refreshed."""
    path = tmp / "copy.pt"
    save_checkpoint(path, learner, {})
    copy, _ = load_checkpoint(path, cfg, full=full)
    copy.refresh_catalogue()
    return copy


def nightly(parent: Learner | None, samples: Iterable[Sample], day: int, cfg: LearningSettings,
            tmp: Path) -> Learner:
    """The full model of ``day``: ``parent`` (None: a fresh model) trained on one shuffled epoch of the
    day's positives, whole network (``online_learning.full_update.run_full_update``)."""
    learner = Learner.fresh(cfg, full=True) if parent is None else clone(parent, cfg, tmp, full=True)
    order = [s for s in samples if s.kind == "positive"]
    random.Random(f"{cfg.seed}:{day_name(day)}").shuffle(order)
    for start in range(0, len(order), cfg.batch_size):
        learner.train(order[start:start + cfg.batch_size])
    learner.model.freeze_dense()
    return learner


# --- the prequential run -----------------------------------------------------------------------------
SERIES = ("hits", "rr", "missing", "catalogue", "scores")


@dataclass
class Run:
    """Per-sample arrays over all evaluated days, the same samples in the same order for every regime
    (``series[name][regime]``: chunks of :data:`SERIES` as :func:`score_chunk` returns them),
    and the recall hits of a popularity reference (the K most clicked items so far, day 0 included)."""

    days: list[int]
    pos_ts: list[int] = field(default_factory=list)
    pos_day: list[int] = field(default_factory=list)
    imp_day: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    series: dict[str, dict[str, list[np.ndarray]]] = field(
        default_factory=lambda: {s: {r: [] for r in REGIMES} for s in SERIES})
    popular: list[float] = field(default_factory=list)
    clicks: Counter[str] = field(default_factory=Counter)

    def array(self, name: str, regime: str) -> np.ndarray:
        parts = self.series[name][regime]
        return np.concatenate(parts) if parts else np.zeros(0)


def score_chunk(learner: Learner, positives: Sequence[Sample],
                impressions: Sequence[Sample]) -> tuple[np.ndarray, ...]:
    """Per positive: recall@K hit, reciprocal rank, outside the catalogue, catalogue size; impression scores."""
    n = len(learner.catalogue_ids)
    ranks = learner.rank_positives(positives)
    return (recall_at(ranks, K, n_items=n), reciprocal_rank(ranks, n_items=n), (ranks > n).astype(np.float64),
            np.full(len(positives), float(n)), learner.score_impressions(impressions).astype(np.float64))


def _step(run: Run, day: int, chunk: Sequence[Sample], learners: Mapping[str, Learner]) -> None:
    """Test every regime on the chunk, then train the non-frozen ones on its positives."""
    positives = [s for s in chunk if s.kind == "positive"]
    impressions = [s for s in chunk if s.kind == "impression"]
    run.pos_ts += [s.ts for s in positives]
    run.pos_day += [day] * len(positives)
    run.imp_day += [day] * len(impressions)
    run.labels += [(s.labels or {}).get("click", 0) for s in impressions]
    popular = {item for item, _ in run.clicks.most_common(K)}
    run.popular += [float(s.item_id in popular) for s in positives]
    run.clicks.update(s.item_id for s in positives)
    for name, learner in learners.items():
        for series, values in zip(SERIES, score_chunk(learner, positives, impressions), strict=True):
            run.series[series][name].append(values)
        if name != FROZEN:
            learner.train(positives)
            learner.refresh_catalogue()


def run_regimes(days: Sequence[tuple[int, Sequence[Sample]]], cfg: LearningSettings,
                observer: Observer | None = None, desc: str = "days") -> Run:
    """The three regimes over ``days`` (day 0 warm-up), prequentially (module docstring)."""
    run = Run(days=[d for d, _ in days[1:]])
    seen: Observer = observer or (lambda *_: None)
    with tempfile.TemporaryDirectory(prefix="recstream-lq-") as home:
        tmp = Path(home)
        full = nightly(None, days[0][1], days[0][0], cfg, tmp)
        run.clicks.update(s.item_id for s in days[0][1] if s.kind == "positive")
        chain = clone(full, cfg, tmp, full=False)
        with tqdm(total=sum(len(s) for _, s in days[1:]), desc=desc, unit="sample", **BAR) as bar:
            for n, (day, samples) in enumerate(days[1:], 1):
                learners = {FROZEN: clone(full, cfg, tmp, full=False), OURS: clone(full, cfg, tmp, full=False),
                            INCREMENTAL: chain}
                for name, learner in learners.items():
                    seen(name, day, -1, learner)
                for k, chunk in enumerate(chunks(samples, cfg.batch_size)):
                    _step(run, day, chunk, learners)
                    for name, learner in learners.items():
                        seen(name, day, k, learner)
                    bar.update(len(chunk))
                if n < len(days) - 1:  # the last day's full model would serve no evaluated day
                    full = nightly(full, samples, day, cfg, tmp)
    return run


# --- summary -----------------------------------------------------------------------------------------
def _metrics(run: Run, regime: str, pos: np.ndarray, imp: np.ndarray) -> dict[str, Any]:
    mean = {s: float(run.array(s, regime)[pos].mean()) if pos.any() else None for s in SERIES[:4]}
    a = auc(run.array("scores", regime)[imp], np.asarray(run.labels, np.float64)[imp]) if imp.any() else np.nan
    return {"positives": int(pos.sum()), "impressions": int(imp.sum()), "recall@50": mean["hits"], "mrr": mean["rr"],
            "auc": None if np.isnan(a) else a, "outside_catalogue": mean["missing"], "catalogue": mean["catalogue"]}


def compare(run: Run, base: str, other: str) -> dict[str, list[float]]:
    """``other`` − ``base``: relative recall@50 and MRR, absolute AUC, each ``[diff, lo, hi]`` (95 %)."""
    labels = np.asarray(run.labels, np.float64)
    n, seed = BOOTSTRAP_N, BOOTSTRAP_SEED

    def rel(series: str) -> list[float]:
        return list(paired_bootstrap(run.array(series, base), run.array(series, other), n=n, seed=seed,
                                     relative=True))

    return {"recall@50_rel": rel("hits"), "mrr_rel": rel("rr"),
            "auc_abs": list(paired_bootstrap_auc(run.array("scores", base), run.array("scores", other), labels,
                                                 n=n, seed=seed))}


def goals(diffs: Mapping[str, Mapping[str, list[float]]]) -> list[dict[str, Any]]:
    """The issue's goals, each judged on the point estimate and on the 95 % interval."""
    vs_frozen, vs_inc = diffs[f"{OURS} vs {FROZEN}"], diffs[f"{OURS} vs {INCREMENTAL}"]
    r, a = vs_frozen["recall@50_rel"], vs_frozen["auc_abs"]
    ri, ai = vs_inc["recall@50_rel"], vs_inc["auc_abs"]
    return [
        {"goal": "ours vs frozen: recall@50 >= +20 % relative", "met": r[0] >= 0.20,
         "strict": r[1] >= 0.20, "rule": "point >= +20 % (strict: 95 % lower bound >= +20 %)"},
        {"goal": "ours vs frozen: AUC higher by a clear margin", "met": a[1] > 0,
         "strict": a[1] > 0.01, "rule": "95 % lower bound > 0 (strict: > +0.01)"},
        {"goal": "ours >= incremental only (recall@50 and AUC)", "met": ri[0] >= 0 and ai[0] >= 0,
         "strict": ri[1] >= 0 and ai[1] >= 0, "rule": "both points >= 0 (strict: both lower bounds >= 0)"},
    ]


def summarize(run: Run) -> dict[str, Any]:
    """Overall and per-day metrics per regime, the paired differences and the goals."""
    pos_day, imp_day = np.asarray(run.pos_day), np.asarray(run.imp_day)
    overall = {r: _metrics(run, r, pos_day >= 0, imp_day >= 0) for r in REGIMES}
    per_day = {r: [{"day": day_name(d), **_metrics(run, r, pos_day == d, imp_day == d)} for d in run.days]
               for r in REGIMES}
    diffs = {f"{OURS} vs {FROZEN}": compare(run, FROZEN, OURS),
             f"{OURS} vs {INCREMENTAL}": compare(run, INCREMENTAL, OURS)}
    popular = np.asarray(run.popular)
    reference = {"popularity_recall@50": float(popular.mean()),
                 "per_day": {day_name(d): float(popular[pos_day == d].mean()) for d in run.days}}
    return {"days": [day_name(d) for d in run.days], "overall": overall, "per_day": per_day,
            "differences": diffs, "goals": goals(diffs), "reference": reference}


def plot(run: Run, summary: Mapping[str, Any], title: str, path: Path) -> None:
    """Windowed recall@50 over event time (day boundaries dotted) and AUC per day, per regime."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 7.5), gridspec_kw={"height_ratios": [3, 2]})
    t0 = run.days[0] * MS_PER_DAY
    hours = (np.asarray(run.pos_ts, np.float64) - t0) / 3.6e6
    window = max(20, min(1000, hours.size // 20))
    for regime in REGIMES:
        hits = run.array("hits", regime)
        if hits.size >= window:
            top.plot(hours[window - 1:], np.convolve(hits, np.ones(window) / window, mode="valid"), label=regime)
    for d in run.days:
        top.axvline((d * MS_PER_DAY - t0) / 3.6e6, color="grey", linestyle=":", linewidth=1)
    top.set(xlabel=f"event time (hours since {day_name(run.days[0])} 00:00 UTC)", ylabel=f"recall@{K}",
            title=f"{title}: recall@{K} over a sliding window of {window} positives")
    top.legend()
    for regime in REGIMES:
        values = [np.nan if d["auc"] is None else d["auc"] for d in summary["per_day"][regime]]
        bottom.plot(summary["days"], values, marker="o", label=regime)
    bottom.set(xlabel="day (UTC)", ylabel="AUC (impressions)", title="AUC per day")
    bottom.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- datasets, output, CLI ---------------------------------------------------------------------------
def bench_dataset(name: str, events: Iterable[Event], meta: Mapping[str, ItemMeta], settings: Settings,
                  out: Path, end_ms: int | None = None) -> dict[str, Any]:
    """Join, split, run the regimes, summarize and plot one dataset."""
    started = time.monotonic()
    samples = join_samples(events, meta, JoinConfig.from_settings(settings), settings.stats.allowed_lateness_ms)
    days = split_days(samples, end_ms)
    joined_s = time.monotonic() - started
    if len(days) < 2:
        return {"skipped": f"{len(days)} day(s) of samples: need a warm-up day and at least one more"}
    run = run_regimes(days, settings.learning, desc=name)
    summary = summarize(run)
    plot(run, summary, name, out / f"learning_quality_{name}.png")
    kinds = {day_name(d): {"positives": sum(s.kind == "positive" for s in ss),
                           "impressions": sum(s.kind == "impression" for s in ss)} for d, ss in days}
    return {"samples_per_day": kinds, "warm_up_day": day_name(days[0][0]), "join_seconds": round(joined_s, 1),
            "seconds": round(time.monotonic() - started, 1), **summary}


def load(name: str, args: argparse.Namespace) -> tuple[Iterable[Event], Mapping[str, ItemMeta], dict[str, Any]] | str:
    """A dataset's events (delivery order), item metadata and description, or why it is skipped."""
    if name == "synthetic":  # emission order: late and duplicate deliveries included
        cfg = GeneratorConfig(users=args.users, items=args.items, days=args.days, events=args.events,
                              seed=args.seed, start_ms=SYNTHETIC_START_MS)
        world = World(cfg)
        return (generate_events(cfg, world), {m.item_id: m for m in generate_items(cfg, world)},
                {**{k: getattr(cfg, k) for k in ("users", "items", "days", "events", "seed", "start_ms")},
                 "end_ms": cfg.end_ms})
    if name == "mind":  # sorted by time (stable: a row's impressions stay before its clicks)
        behaviors, news, rejects = args.data / "behaviors.tsv", args.data / "news.tsv", Rejects()
        if not behaviors.is_file() or not news.is_file():
            return f"no behaviors.tsv + news.tsv under {args.data}"
        events = sorted(read_mind(behaviors, news, on_error=rejects), key=lambda e: e.ts)
        return (events, {m.item_id: m for m in mind_news_items(news)},
                {"path": str(args.data), "events": len(events), "rejected_rows": rejects.total})
    return f"unknown dataset {name!r} (synthetic, mind)"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/mind_sample"), help="the MIND sample")
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--days", type=float, default=5.0)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic data")
    parser.add_argument("--datasets", default="synthetic,mind")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    settings = Settings(learning=LEARNING)
    started = time.monotonic()
    results: dict[str, Any] = {}
    for name in [n.strip() for n in args.datasets.split(",") if n.strip()]:
        loaded = load(name, args)
        if isinstance(loaded, str):
            results[name] = {"skipped": loaded}
            continue
        events, meta, info = loaded
        results[name] = {"data": info, **bench_dataset(name, events, meta, settings, args.out, info.get("end_ms"))}
    config = {"learning": settings.learning.model_dump(), "join": settings.join.model_dump(),
              "allowed_lateness_ms": settings.stats.allowed_lateness_ms, "k": K,
              "bootstrap": {"n": BOOTSTRAP_N, "seed": BOOTSTRAP_SEED},
              "catalogue_refresh": "after every chunk (frozen: once a day, it never changes)",
              "chunk_positives": settings.learning.batch_size}
    summary = {"config": config, "datasets": results, "seconds": round(time.monotonic() - started, 1)}
    md = write_results(args.out, "learning_quality", summary, table(results, K))
    with md.open("a") as fh:
        fh.write(sections(results, K, LEARNING))
    print(md.read_text())


if __name__ == "__main__":
    main()
