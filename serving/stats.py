"""Serving reads of windowed statistics (mounted on ``FeatureClient``; semantics in docs/statistics.md).

One ``MGET`` fetches the tile blobs of any number of entities; numpy turns them into counts per window
and event type (:func:`filters.tiles.window_counts`) and then into read-time features: raw counts,
``log1p_<type>`` and Bayesian-smoothed rates ``(x + a * p) / (base + a)`` with ``a`` =
``stats.prior_strength`` and ``p`` = ``stats.prior_rates[rate]``.

>>> counts = np.array([[[100, 5, 1, 0, 0, 0]]])       # 1 entity, 1 window: 100 impressions, 5 clicks
>>> names, values = features(counts, ["impression", "click"], 20.0, {"ctr": 0.04, "like_rate": 0.1})
>>> dict(zip(names, values[0, 0].round(4).tolist()))
{'impression': 100.0, 'click': 5.0, 'log1p_impression': 4.6151, 'log1p_click': 1.7918,
 'ctr': 0.0483, 'like_rate': 0.12}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import redis

from filters.events import EVENT_TYPES
from filters.tiles import COUNTERS, TileLayout, decode_blobs, window_counts
from infra.clock import Clock, now_ms
from infra.keys import ENTITY_KINDS, KeyLayout
from infra.redis_client import mget, require_binary_client
from infra.settings import Settings

__all__ = ["RATES", "StatsMatrix", "StatsReader", "features"]

RATES: dict[str, tuple[str, str]] = {
    "ctr": ("click", "impression"),
    "like_rate": ("like", "click"),
    "collect_rate": ("collect", "click"),
    "share_rate": ("share", "click"),
    "comment_rate": ("comment", "click"),
}
"""Rate name -> (numerator, denominator) event types."""
_COL = {t: i for i, t in enumerate(COUNTERS)}
EntityId = str | tuple[str, str]


def features(
    counts: npt.NDArray[np.int64],
    actions: Sequence[str],
    prior_strength: float,
    prior_rates: Mapping[str, float],
) -> tuple[tuple[str, ...], npt.NDArray[np.float64]]:
    """Feature names and values ``(n, windows, names)`` from counts ``(n, windows, 6)``.

    Names: the counts of ``actions``, ``log1p_<action>`` of the same, then every rate of
    ``prior_rates`` (in :data:`RATES` order). A rate with no data and no prior is its prior rate
    (0/0 never happens); every feature is >= 0.

    >>> names, v = features(np.zeros((1, 1, 6), dtype=np.int64), ["click"], 0.0, {"ctr": 0.04})
    >>> names, v.tolist()
    (('click', 'log1p_click', 'ctr'), [[[0.0, 0.0, 0.04]]])
    """
    rates = [r for r in RATES if r in prior_rates]
    cols = [_COL[a] for a in actions]
    c = counts.astype(np.float64)
    out = np.empty((*counts.shape[:2], 2 * len(cols) + len(rates)), dtype=np.float64)
    out[..., : len(cols)] = c[..., cols]
    out[..., len(cols) : 2 * len(cols)] = np.log1p(c[..., cols])
    alpha = float(prior_strength)
    for k, rate in enumerate(rates):
        num, den = RATES[rate]
        p = float(prior_rates[rate])
        x, base = c[..., _COL[num]], c[..., _COL[den]]
        denom = base + alpha
        with np.errstate(divide="ignore", invalid="ignore"):
            out[..., 2 * len(cols) + k] = np.where(denom > 0, (x + alpha * p) / denom, p)
    names = (*actions, *(f"log1p_{a}" for a in actions), *rates)
    return names, out


@dataclass(frozen=True)
class StatsMatrix:
    """Features of many entities at once: ``values[i, w, k]`` = entity ``ids[i]``, ``windows[w]``,
    ``names[k]``. Hand ``values`` to a ranker as is; :meth:`row` / :meth:`to_dicts` build dicts."""

    ids: Sequence[EntityId]
    windows: tuple[str, ...]
    names: tuple[str, ...]
    values: npt.NDArray[np.float64]

    def row(self, i: int) -> dict[str, dict[str, float]]:
        """``{window: {name: value}}`` of the ``i``-th entity (what :meth:`StatsReader.stats` returns)."""
        rows = self.values[i].tolist()
        return {w: dict(zip(self.names, r, strict=True)) for w, r in zip(self.windows, rows, strict=True)}

    def to_dicts(self) -> list[dict[str, dict[str, float]]]:
        """:meth:`row` of every entity."""
        return [self.row(i) for i in range(len(self.ids))]

    def column(self, window: str, name: str) -> npt.NDArray[np.float64]:
        """One feature of every entity, e.g. ``column("1d", "ctr")``."""
        return self.values[:, self.windows.index(window), self.names.index(name)]


class StatsReader:
    """``stats`` / ``stats_multi`` over a sync ``redis.Redis`` client."""

    def __init__(self, client: redis.Redis, settings: Settings, clock: Clock = now_ms) -> None:
        require_binary_client(client)
        self.client = client
        self.settings = settings
        self.clock = clock
        self.keys = KeyLayout(settings.redis.shards)
        self.layout = TileLayout.from_settings(settings.stats)
        self._all_windows = tuple(w.name for w in self.layout.windows)

    def _resolve(
        self, windows: Sequence[str] | None, actions: Sequence[str] | None
    ) -> tuple[tuple[str, ...], tuple[str, ...]]:
        wins = self._all_windows if windows is None else tuple(windows)
        for w in wins:
            self.layout.window(w)  # raises KeyError for an unknown window
        acts = EVENT_TYPES if actions is None else tuple(actions)
        unknown = [a for a in acts if a not in EVENT_TYPES]
        if unknown:
            msg = f"unknown actions {unknown}; known: {list(EVENT_TYPES)}"
            raise ValueError(msg)
        return wins, acts

    def compute(
        self,
        blobs: Sequence[bytes | None],
        ids: Sequence[EntityId],
        windows: Sequence[str] | None = None,
        actions: Sequence[str] | None = None,
        at: int | None = None,
    ) -> StatsMatrix:
        """The features of already fetched blobs (``None`` = no key); what :meth:`stats_multi` does
        after its ``MGET``."""
        wins, acts = self._resolve(windows, actions)
        at_ms = self.clock() if at is None else int(at)
        counts = window_counts(decode_blobs(blobs, self.layout), self.layout, at_ms, wins)
        stats = self.settings.stats
        names, values = features(counts, acts, stats.prior_strength, stats.prior_rates)
        return StatsMatrix(ids, wins, names, values)

    def stats_multi(
        self,
        kind: str,
        ids: Sequence[EntityId],
        windows: Sequence[str] | None = None,
        actions: Sequence[str] | None = None,
        at: int | None = None,
    ) -> StatsMatrix:
        """Features of many entities of one ``kind`` (``user``, ``item``, ``author``, ``user_category``
        with ``(user_id, category)`` ids) in one ``MGET`` (one per slot on a Redis Cluster); ``at`` = epoch ms
        (default: now)."""
        keys = self.keys_of(kind, ids)
        blobs = mget(self.client, keys)
        return self.compute(blobs, ids, windows, actions, at)

    def keys_of(self, kind: str, ids: Sequence[EntityId]) -> list[str]:
        """The tile keys of entities of one ``kind`` (``ValueError`` for an unknown kind)."""
        if kind not in ENTITY_KINDS:
            msg = f"unknown kind {kind!r}; known: {list(ENTITY_KINDS)}"
            raise ValueError(msg)
        return [self.keys.stats(kind, i) for i in ids]

    def stats(
        self,
        kind: str,
        entity_id: EntityId,
        windows: Sequence[str] | None = None,
        actions: Sequence[str] | None = None,
        at: int | None = None,
    ) -> dict[str, dict[str, float]]:
        """``{window: {name: value}}`` of one entity (see :meth:`stats_multi`)."""
        return self.stats_multi(kind, [entity_id], windows, actions, at).row(0)
