"""A synthetic but realistic event stream, deterministic for a seed (``recstream generate``).

The model, hour by hour:

* **items** have a Zipf popularity (exponent ``zipf_s``), a category, an author (authors are Zipf too),
  a quality factor and a publish time (most before the start, some during the span — an item is
  never shown before it is published);
* **users** have a heavy-tailed activity and two category-interest vectors; interests drift linearly
  from the first to the second over the span;
* **requests** follow a day/night cycle (UTC, peak in the evening, trough around 4 am); each shows a
  slate of items at positions 0..k-1, mostly from the user's current interests, some exploration;
* **clicks** happen with probability ∝ interest × position bias × item quality, calibrated so the
  overall CTR ≈ ``ctr``; **like / collect / share / comment** happen only after a click, at the rates
  of :data:`ACTION_RATES` (per click);
* events carry ``category`` / ``author_id`` only ``meta_share`` of the time, so enrichment from the item
  metadata matters; a ``dup_share`` of events is delivered twice (same ``event_id``, a little later),
  and a ``late_share`` is emitted 2–60 minutes after its event time.

Generation is pure (:func:`generate_items`, :func:`generate_events`); :func:`write_dataset` does the
file IO. Memory is bounded by one hour of events plus the late tail.

>>> cfg = GeneratorConfig(users=20, items=50, days=0.5, events=2000, seed=7, start_ms=1_700_000_000_000)
>>> evs = list(generate_events(cfg))
>>> evs == list(generate_events(cfg)), 1500 < len(evs) < 2500
(True, True)
>>> {e.type for e in evs} >= {"impression", "click"}
True
"""

from __future__ import annotations

import heapq
import itertools
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from filters.events import Event, ItemMeta, encode
from infra.errors import InputError

__all__ = ["ACTION_RATES", "CATEGORIES", "GenStats", "GeneratorConfig", "World", "generate_events",
           "generate_items", "write_dataset"]

CATEGORIES: tuple[str, ...] = ("food", "travel", "beauty", "fashion", "tech", "sports", "music",
                               "movies", "pets", "fitness", "home", "finance")
#: Probability of each action given a click (illustrative, like the stats priors in settings).
ACTION_RATES: dict[str, float] = {"like": 0.10, "collect": 0.05, "share": 0.02, "comment": 0.02}
#: Relative request intensity per UTC hour of day (mean 1 after normalization).
_DIURNAL = np.array([0.6, 0.4, 0.25, 0.15, 0.12, 0.15, 0.3, 0.55, 0.75, 0.8, 0.8, 0.85,
                     1.0, 0.9, 0.8, 0.8, 0.85, 0.95, 1.1, 1.3, 1.45, 1.5, 1.3, 0.95])
_DIURNAL = _DIURNAL / _DIURNAL.mean()
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


@dataclass(frozen=True)
class GeneratorConfig:
    """Parameters of one synthetic dataset; ``start_ms`` is explicit so the output is reproducible."""

    users: int = 1000
    items: int = 5000
    days: float = 7.0
    start_ms: int = 1_700_000_000_000
    events: int | None = None  # approximate total; None = rate_per_user * users * days
    rate_per_user: float = 30.0  # events per user per day
    seed: int = 0
    ctr: float = 0.04
    slate_min: int = 6
    slate_max: int = 14
    zipf_s: float = 1.1
    explore: float = 0.2
    meta_share: float = 0.85
    dup_share: float = 0.005
    late_share: float = 0.01
    late_min_ms: int = 2 * 60_000
    late_max_ms: int = HOUR_MS
    categories: tuple[str, ...] = CATEGORIES

    def __post_init__(self) -> None:
        checks = [
            (self.users >= 1, "users must be >= 1"),
            (self.items >= 1, "items must be >= 1"),
            (0 < self.days <= 3650, "days must be in (0, 3650]"),
            (0 <= self.start_ms < 9_000_000_000_000, "start must be epoch milliseconds"),
            (self.events is None or self.events >= 1, "events must be >= 1"),
            (self.rate_per_user > 0, "rate-per-user must be > 0"),
            (0 < self.ctr < 0.5, "ctr must be in (0, 0.5)"),
            (1 <= self.slate_min <= self.slate_max, "need 1 <= slate_min <= slate_max"),
            (all(0 <= s < 1 for s in (self.explore, self.dup_share, self.late_share)), "shares in [0, 1)"),
            (0 <= self.meta_share <= 1, "meta_share in [0, 1]"),
            (0 < self.late_min_ms <= self.late_max_ms, "need 0 < late_min_ms <= late_max_ms"),
            (len(self.categories) >= 1, "need at least one category"),
        ]
        for ok, msg in checks:
            if not ok:
                text = f"generate: {msg}"
                raise InputError(text)

    @property
    def end_ms(self) -> int:
        """End of the span (exclusive)."""
        return self.start_ms + int(self.days * DAY_MS)

    @property
    def target_events(self) -> int:
        """The approximate number of events requested."""
        return self.events if self.events is not None else round(self.rate_per_user * self.users * self.days)


@dataclass
class GenStats:
    """What was generated: counts per type, duplicate deliveries, late events, items."""

    types: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    late: int = 0
    items: int = 0

    @property
    def events(self) -> int:
        """Events written, duplicates included."""
        return sum(self.types.values()) + self.duplicates


def _rngs(seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    world, events = np.random.SeedSequence(seed).spawn(2)
    return np.random.default_rng(world), np.random.default_rng(events)


class World:
    """Items and users of a dataset (numpy arrays; a few bytes per item and user)."""

    def __init__(self, cfg: GeneratorConfig) -> None:
        rng, _ = _rngs(cfg.seed)
        self.cfg = cfg
        n_cat = min(len(cfg.categories), cfg.items)  # every category used has at least one old item
        self.categories = cfg.categories[:n_cat]
        n_items, n_users = cfg.items, cfg.users
        # Items: category (the first n_cat items cover every category), Zipf popularity, author, quality.
        cat_share = rng.dirichlet(np.full(n_cat, 2.0))
        self.item_cat = rng.choice(n_cat, size=n_items, p=cat_share)
        self.item_cat[:n_cat] = np.arange(n_cat)
        self.item_pop = 1.0 / (rng.permutation(n_items) + 1.0) ** cfg.zipf_s
        n_auth = max(1, n_items // 10)
        auth_w = 1.0 / np.arange(1, n_auth + 1) ** 1.0
        self.item_author = rng.choice(n_auth, size=n_items, p=auth_w / auth_w.sum())
        self.item_quality = rng.lognormal(0.0, 0.4, size=n_items)
        span = cfg.end_ms - cfg.start_ms
        old = rng.random(n_items) < 0.85
        old[:n_cat] = True
        before = cfg.start_ms - rng.integers(0, 30 * DAY_MS, size=n_items)
        during = cfg.start_ms + rng.integers(0, max(1, int(span * 0.9)), size=n_items)
        self.item_publish = np.where(old, before, during).clip(0)
        # Per category: item indices and cumulative popularity, over all items and over old ones.
        self.cat_items: list[np.ndarray] = []
        self.cat_cdf: list[np.ndarray] = []
        self.cat_old_items: list[np.ndarray] = []
        self.cat_old_cdf: list[np.ndarray] = []
        for c in range(n_cat):
            idx = np.flatnonzero(self.item_cat == c)
            self.cat_items.append(idx)
            self.cat_cdf.append(np.cumsum(self.item_pop[idx]))
            old_idx = idx[self.item_publish[idx] <= cfg.start_ms]
            self.cat_old_items.append(old_idx)
            self.cat_old_cdf.append(np.cumsum(self.item_pop[old_idx]))
        glob = np.array([self.item_pop[i].sum() for i in self.cat_items])
        self.global_interest = glob / glob.sum()
        # Users: heavy-tailed activity, interests drifting from interest_a to interest_b.
        act = rng.lognormal(0.0, 1.0, size=n_users)
        self.user_cdf = np.cumsum(act) / act.sum()
        self.interest_a = rng.dirichlet(np.full(n_cat, 0.3), size=n_users)
        self.interest_b = rng.dirichlet(np.full(n_cat, 0.3), size=n_users)

    def item_meta(self, i: int) -> ItemMeta:
        """The metadata record of item index ``i``."""
        return ItemMeta(item_id=f"i{i}", category=self.categories[int(self.item_cat[i])],
                        author_id=f"a{int(self.item_author[i])}", publish_ts=int(self.item_publish[i]))


def generate_items(cfg: GeneratorConfig, world: World | None = None) -> Iterator[ItemMeta]:
    """Item metadata of every item (``i0`` .. ``i{items-1}``).

    >>> [m.item_id for m in generate_items(GeneratorConfig(items=3, users=1))]
    ['i0', 'i1', 'i2']
    """
    world = world or World(cfg)
    for i in range(cfg.items):
        yield world.item_meta(i)


def _sample_cdf(rng: np.random.Generator, cdf: np.ndarray, n: int) -> np.ndarray:
    idx = np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right")
    return np.asarray(np.minimum(idx, len(cdf) - 1))


def generate_events(
    cfg: GeneratorConfig, world: World | None = None, stats: GenStats | None = None
) -> Iterator[Event]:
    """Events in emission order (late and duplicate deliveries appear after their event time)."""
    world = world or World(cfg)
    stats = stats if stats is not None else GenStats()
    _, rng = _rngs(cfg.seed)
    n_cat = len(world.categories)
    per_impression = (1 + cfg.ctr * (1 + sum(ACTION_RATES.values()))) * (1 + cfg.dup_share)
    mean_slate = (cfg.slate_min + cfg.slate_max) / 2
    hours = range(cfg.start_ms, cfg.end_ms, HOUR_MS)
    weighted_ms = sum((min(t + HOUR_MS, cfg.end_ms) - t) * _DIURNAL[(t // HOUR_MS) % 24] for t in hours)
    req_per_ms = cfg.target_events / per_impression / mean_slate / weighted_ms
    actions = list(ACTION_RATES.items())
    pending: list[tuple[int, int, Event]] = []  # heap of (emit time, sequence, event)
    seq = itertools.count()
    req_counter = itertools.count()
    for t0 in hours:
        t1 = min(t0 + HOUR_MS, cfg.end_ms)
        hour = (t0 // HOUR_MS) % 24
        n_req = int(rng.poisson(req_per_ms * (t1 - t0) * _DIURNAL[hour]))
        if n_req:
            req_users = np.searchsorted(world.user_cdf, rng.random(n_req), side="right")
            req_users = np.minimum(req_users, cfg.users - 1)
            req_ts = np.sort(rng.integers(t0, t1, size=n_req))
            sizes = rng.integers(cfg.slate_min, cfg.slate_max + 1, size=n_req)
            users = np.repeat(req_users, sizes)
            ts = np.repeat(req_ts, sizes)
            req_ids = np.repeat(np.arange(n_req), sizes)
            pos = np.arange(len(users)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
            drift = ((ts - cfg.start_ms) / (cfg.end_ms - cfg.start_ms))[:, None]
            interest = (1 - drift) * world.interest_a[users] + drift * world.interest_b[users]
            probs = (1 - cfg.explore) * interest + cfg.explore * world.global_interest
            cats = (probs.cumsum(axis=1) < rng.random(len(users))[:, None]).sum(axis=1).clip(0, n_cat - 1)
            items = np.empty(len(users), dtype=np.int64)
            for c in range(n_cat):
                sel = np.flatnonzero(cats == c)
                if not len(sel):
                    continue
                picked = world.cat_items[c][_sample_cdf(rng, world.cat_cdf[c], len(sel))]
                unpublished = world.item_publish[picked] > ts[sel]
                if unpublished.any():  # not yet published: show an older item of the category
                    fallback = _sample_cdf(rng, world.cat_old_cdf[c], int(unpublished.sum()))
                    picked[unpublished] = world.cat_old_items[c][fallback]
                items[sel] = picked
            affinity = 0.3 + n_cat * interest[np.arange(len(users)), world.item_cat[items]]
            weight = affinity * world.item_quality[items] / (1.0 + 0.15 * pos)
            p_click = np.minimum(cfg.ctr * weight / weight.mean(), 0.9)
            clicked = rng.random(len(users)) < p_click
            click_delay = 1000 + rng.exponential(7000, size=len(users)).astype(np.int64)
            act_flags = rng.random((len(users), len(actions))) < np.array([r for _, r in actions])
            act_delay = 2000 + rng.exponential(30_000, size=(len(users), len(actions))).astype(np.int64)
            base = [next(req_counter) for _ in range(n_req)]
            rows: list[tuple[str, int, int, int, int, int]] = []  # type, user, item, ts, request, pos
            for k in range(len(users)):
                u, it, t, r, p = int(users[k]), int(items[k]), int(ts[k]), base[req_ids[k]], int(pos[k])
                rows.append(("impression", u, it, t, r, p))
                if clicked[k]:
                    tc = t + int(click_delay[k])
                    rows.append(("click", u, it, tc, r, p))
                    for j, (name, _) in enumerate(actions):
                        if act_flags[k, j]:
                            rows.append((name, u, it, tc + int(act_delay[k, j]), r, p))
            n = len(rows)
            has_cat = rng.random(n) < cfg.meta_share
            has_author = rng.random(n) < 0.9
            late = rng.random(n) < cfg.late_share
            lag = rng.integers(cfg.late_min_ms, cfg.late_max_ms + 1, size=n)
            dup = rng.random(n) < cfg.dup_share
            dup_delay = 1000 + rng.exponential(60_000, size=n).astype(np.int64)
            for k, (etype, u, it, t, r, p) in enumerate(rows):
                cat = world.categories[int(world.item_cat[it])] if has_cat[k] else None
                author = f"a{int(world.item_author[it])}" if has_cat[k] and has_author[k] else None
                ev = Event(event_id=f"g{cfg.seed}-{r}:{p}:{etype}", type=etype,  # type: ignore[arg-type]
                           user_id=f"u{u}", item_id=f"i{it}", ts=t, request_id=f"g{cfg.seed}-{r}",
                           position=p, category=cat, author_id=author)
                emit = t + int(lag[k]) if late[k] else t
                stats.types[etype] += 1
                stats.late += bool(late[k])
                heapq.heappush(pending, (emit, next(seq), ev))
                if dup[k]:
                    stats.duplicates += 1
                    heapq.heappush(pending, (emit + int(dup_delay[k]), next(seq), ev))
        # Everything generated later has an event time >= t1, so what is due before t1 can go out.
        while pending and pending[0][0] < t1:
            yield heapq.heappop(pending)[2]
    while pending:
        yield heapq.heappop(pending)[2]


def write_dataset(
    cfg: GeneratorConfig, out_dir: str | Path, progress: Callable[[int], None] | None = None
) -> GenStats:
    """Write ``items.jsonl``, ``events.jsonl`` (and ``manifest.json``) to ``out_dir``.

    ``progress`` is called with the number of events written since the last call.
    """
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        world = World(cfg)
        stats = GenStats()
        with open(out / "items.jsonl", "wb") as fh:
            for meta in generate_items(cfg, world):
                fh.write(encode(meta) + b"\n")
                stats.items += 1
        started = time.monotonic()
        with open(out / "events.jsonl", "wb", buffering=1 << 20) as fh:
            chunk = 0
            for ev in generate_events(cfg, world, stats):
                fh.write(encode(ev) + b"\n")
                chunk += 1
                if chunk == 10_000 and progress is not None:
                    progress(chunk)
                    chunk = 0
            if progress is not None and chunk:
                progress(chunk)
        manifest = {"config": {k: v for k, v in vars(cfg).items() if k != "categories"},
                    "categories": list(world.categories), "events": stats.events,
                    "types": dict(stats.types), "duplicates": stats.duplicates, "late": stats.late,
                    "items": stats.items, "seconds": round(time.monotonic() - started, 3)}
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    except OSError as exc:
        msg = f"cannot write to {out}: {exc.strerror or exc}"
        raise InputError(msg) from None
    return stats
