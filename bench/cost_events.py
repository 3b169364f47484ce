"""Synthetic per-user activity for :mod:`bench.cost_bench`: users pinned to source partitions, a catalogue
with Zipf popularity inside each category, and each user's events day by day in event-time order.

The activity model (:class:`Activity`), per user and day of event time:

* a heavy-tailed activity level ``a`` (lognormal, mean 1, ``spread`` = sigma), fixed per user;
* ``Poisson(impressions_per_day · a)`` impressions at uniform times of the day; each shows an item of
  one of the user's ``favourites`` categories with probability ``favourite_share``, else of any
  category; inside a category items are Zipf-popular (exponent 1.1);
* each impression is clicked with probability ``ctr`` (2–60 s later); a click is followed by a like /
  collect / share / comment at the rates of :data:`recstream.generate.ACTION_RATES`.

Every event carries ``category`` and ``author_id`` (no enrichment reads) and a 32-character event id (the
length of a UUID's hex digits: the dedup hashes hold them). A partition's users are chosen
so that ``murmur2(user) % partitions`` is that partition (what the worker checks), which lets the
benchmark add users partition by partition: each partition has its own event-time clock, so a later
cohort's history is never late against an earlier one's.

>>> cat = Catalogue(200, seed=1)
>>> users = users_by_partition(4, 5, [0, 2])
>>> [len(users[p]) for p in (0, 2)], all(murmur2_partition(u.encode(), 4) == 2 for u in users[2])
([5, 5], True)
>>> cohort = Cohort(users[0], cat, Activity(), seed=3)
>>> evs = cohort.day(0, 1_700_000_000_000)
>>> 50 < len(evs) < 200, evs == sorted(evs, key=lambda e: e.ts), {e.type for e in evs} >= {"impression", "click"}
(True, True, True)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from filters.events import EVENT_TYPES, Event, encode_batch
from recstream.generate import ACTION_RATES, CATEGORIES, DAY_MS
from stream.batching import murmur2_partition
from stream.ingest import Record

EVENTS_PER_RECORD = 500


@dataclass(frozen=True)
class Activity:
    """Per-user activity (see the module docstring)."""

    impressions_per_day: float = 20.0
    ctr: float = 0.1
    spread: float = 0.8
    favourites: int = 3
    favourite_share: float = 0.8

    def describe(self) -> str:
        """One line for the report."""
        clicks = self.impressions_per_day * self.ctr
        actions = ", ".join(f"{k} {v:g}" for k, v in ACTION_RATES.items())
        return (f"Poisson({self.impressions_per_day:g}·a) impressions per user per day, "
                f"a ~ lognormal(σ={self.spread:g}, mean 1); CTR {self.ctr:g} (≈ {clicks:g} clicks/day); then "
                f"{actions} per click; {self.favourite_share:.0%} of impressions from {self.favourites} favourite "
                f"categories of {len(CATEGORIES)}")


class Catalogue:
    """``items`` items ``i0..``, each with a category and an author (``items // 10`` authors)."""

    def __init__(self, items: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.items = items
        self.categories = CATEGORIES
        self.item_cat = rng.integers(0, len(CATEGORIES), size=items)
        self.item_ids = [f"i{k}" for k in range(items)]
        self.authors = max(1, items // 10)
        self.author_ids = [f"a{k % self.authors}" for k in range(items)]
        self._members: list[np.ndarray] = []
        self._cdf: list[np.ndarray] = []
        for c in range(len(CATEGORIES)):
            members = np.flatnonzero(self.item_cat == c)
            if len(members) == 0:  # a tiny catalogue: the category borrows every item
                members = np.arange(items)
            weights = 1.0 / np.arange(1, len(members) + 1) ** 1.1
            self._members.append(rng.permutation(members))
            self._cdf.append(np.cumsum(weights) / weights.sum())

    def sample(self, rng: np.random.Generator, cats: np.ndarray) -> np.ndarray:
        """One item index per entry of ``cats`` (a category index), Zipf-popular inside the category."""
        out = np.empty(len(cats), dtype=np.int64)
        for c in np.unique(cats):
            where = np.flatnonzero(cats == c)
            picks = np.searchsorted(self._cdf[c], rng.random(len(where)))
            out[where] = self._members[c][np.minimum(picks, len(self._members[c]) - 1)]
        return out


def users_by_partition(partitions: int, per_partition: int, wanted: Sequence[int]) -> dict[int, list[str]]:
    """``per_partition`` user ids ``u<n>`` for each partition in ``wanted`` (murmur2, like the producer)."""
    out: dict[int, list[str]] = {p: [] for p in wanted}
    n = 0
    while any(len(v) < per_partition for v in out.values()):
        user = f"u{n}"
        bucket = out.get(murmur2_partition(user.encode(), partitions))
        if bucket is not None and len(bucket) < per_partition:
            bucket.append(user)
        n += 1
    return out


class Cohort:
    """The users of one partition and their per-user parameters; :meth:`day` draws one day of events."""

    def __init__(self, users: Sequence[str], catalogue: Catalogue, activity: Activity, seed: int) -> None:
        self.users = list(users)
        self.catalogue, self.activity = catalogue, activity
        self._rng = np.random.default_rng(seed)
        self._tag = f"{seed:016x}"
        sigma = activity.spread
        self.level = self._rng.lognormal(-sigma * sigma / 2, sigma, size=len(users))
        self.favourite = self._rng.integers(0, len(CATEGORIES), size=(len(users), activity.favourites))

    def _impressions(self, start_ms: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(user index, item index, ts) of one day's impressions."""
        rng, act = self._rng, self.activity
        counts = rng.poisson(act.impressions_per_day * self.level)
        who = np.repeat(np.arange(len(self.users)), counts)
        fav = rng.random(len(who)) < act.favourite_share
        cats = np.where(fav, self.favourite[who, rng.integers(0, act.favourites, len(who))],
                        rng.integers(0, len(CATEGORIES), len(who)))
        return who, self.catalogue.sample(rng, cats), start_ms + rng.integers(0, DAY_MS, len(who))

    def day(self, day: int, start_ms: int) -> list[Event]:
        """The events of day ``day`` (starting at ``start_ms``), sorted by ts."""
        rng = self._rng
        who, item, ts = self._impressions(start_ms)
        kinds = [np.full(len(who), EVENT_TYPES.index("impression"))]
        whos, items, tss = [who], [item], [ts]
        clicked = np.flatnonzero(rng.random(len(who)) < self.activity.ctr)
        click_ts = ts[clicked] + rng.integers(2_000, 60_000, len(clicked))
        whos.append(who[clicked])
        items.append(item[clicked])
        tss.append(click_ts)
        kinds.append(np.full(len(clicked), EVENT_TYPES.index("click")))
        for action, rate in ACTION_RATES.items():
            did = np.flatnonzero(rng.random(len(clicked)) < rate)
            whos.append(who[clicked][did])
            items.append(item[clicked][did])
            tss.append(click_ts[did] + rng.integers(5_000, 300_000, len(did)))
            kinds.append(np.full(len(did), EVENT_TYPES.index(action)))
        w, i, t, k = (np.concatenate(a) for a in (whos, items, tss, kinds))
        order = np.argsort(t, kind="stable")
        cat = self.catalogue
        users, names = self.users, cat.categories
        return [
            Event(event_id=f"{self._tag}{day:05d}{n:011d}", type=EVENT_TYPES[kk], user_id=users[u],
                  item_id=cat.item_ids[ii], ts=tt, category=names[cat.item_cat[ii]], author_id=cat.author_ids[ii])
            for n, (u, ii, tt, kk) in enumerate(zip(w[order].tolist(), i[order].tolist(), t[order].tolist(),
                                                    k[order].tolist(), strict=True))
        ]


def records_of(events: Sequence[Event], topic: str, partition: int, first_offset: int) -> list[Record]:
    """Batched records of :data:`EVENTS_PER_RECORD` events (Kafka timestamp unknown: no future check)."""
    return [Record(topic, partition, first_offset + n, None, encode_batch(events[k : k + EVENTS_PER_RECORD]))
            for n, k in enumerate(range(0, len(events), EVENTS_PER_RECORD))]


def batches(records: Sequence[Record], events_per_batch: int) -> Iterator[Sequence[Record]]:
    """The records in consecutive batches of about ``events_per_batch`` events."""
    step = max(1, events_per_batch // EVENTS_PER_RECORD)
    for k in range(0, len(records), step):
        yield records[k : k + step]
