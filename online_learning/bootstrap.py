"""Paired bootstrap intervals for the difference between two models scored on the same samples.

Resampling draws sample indices with replacement *jointly* for both models (the comparison is paired),
recomputes the statistic's difference per resample and reports the percentile interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from online_learning.evaluation import auc

__all__ = ["paired_bootstrap", "paired_bootstrap_auc"]


def _bootstrap(m: int, n: int, seed: int, level: float,
               diff: Callable[[NDArray[np.intp]], float]) -> tuple[float, float, float]:
    """``diff`` of all ``m`` rows, and the percentile interval of ``diff`` over ``n`` resamples of the rows
    (those where it is NaN left out; a NaN interval when all are)."""
    if m == 0 or n < 1 or not 0 < level < 1:
        msg = "bootstrap needs samples, n >= 1 and 0 < level < 1"
        raise ValueError(msg)
    rng = np.random.default_rng(seed)
    draws = np.array([diff(rng.integers(0, m, size=m)) for _ in range(n)])
    draws = draws[~np.isnan(draws)]
    lo, hi = np.percentile(draws, [50 * (1 - level), 50 * (1 + level)]) if draws.size else (math.nan, math.nan)
    return diff(np.arange(m)), float(lo), float(hi)


def paired_bootstrap(a: ArrayLike, b: ArrayLike, statistic: Callable[[NDArray[Any]], float] = np.mean,
                     n: int = 1000, seed: int = 0, relative: bool = False,
                     level: float = 0.95) -> tuple[float, float, float]:
    """``statistic(b) - statistic(a)`` (``/ statistic(a)`` when ``relative``) and its percentile interval.

    ``a`` and ``b`` are per-sample values of two models on the same samples (e.g. recall@k hits), so the
    samples are resampled jointly. Returns ``(diff, lo, hi)``; resamples where the difference is NaN
    (e.g. ``statistic(a) == 0`` with ``relative``) are left out.

    >>> a = np.array([0.0, 1.0, 0.0, 1.0] * 50); b = np.ones(200)
    >>> paired_bootstrap(a, b, n=200)[0], paired_bootstrap(a, b, n=200, relative=True)[0]
    (0.5, 1.0)
    """
    x, y = np.asarray(a), np.asarray(b)
    if x.shape[:1] != y.shape[:1]:
        msg = f"a and b must hold the same samples: {x.shape} vs {y.shape}"
        raise ValueError(msg)

    def diff(idx: NDArray[np.intp]) -> float:
        sa, sb = float(statistic(x[idx])), float(statistic(y[idx]))
        if not relative:
            return sb - sa
        return (sb - sa) / sa if sa != 0 else math.nan

    return _bootstrap(x.shape[0], n, seed, level, diff)


def paired_bootstrap_auc(scores_a: ArrayLike, scores_b: ArrayLike, labels: ArrayLike, n: int = 1000,
                         seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """``auc(scores_b) - auc(scores_a)`` on the same labelled rows and its interval (rows resampled jointly;
    resamples with one class only are left out).

    >>> y = np.array([0, 1] * 100); a = np.where(y == 1, 0.6, 0.4); a[:20] = 1.0 - a[:20]
    >>> d, lo, hi = paired_bootstrap_auc(a, y, y, n=200)
    >>> round(d, 2), lo < d < hi
    (0.1, True)
    """
    sa, sb, y = np.asarray(scores_a), np.asarray(scores_b), np.asarray(labels)
    if not sa.shape == sb.shape == y.shape:
        msg = f"scores_a, scores_b and labels must align: {sa.shape}, {sb.shape}, {y.shape}"
        raise ValueError(msg)

    def diff(idx: NDArray[np.intp]) -> float:
        return auc(sb[idx], y[idx]) - auc(sa[idx], y[idx])

    return _bootstrap(sa.shape[0], n, seed, level, diff)
