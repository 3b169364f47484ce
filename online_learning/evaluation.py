"""Prequential ("test-then-train") evaluation of a two-tower retrieval model trained on a stream, in numpy.

Every sample of the stream is first used to *test* the model as it stands and only then to *train* it, so
each sample is scored by a model that has never seen it and no held-out set is needed; the metrics are
kept over a sliding window of the most recent samples (:class:`SlidingWindow`) so they follow drift.

Per positive (a user and the item they clicked), :func:`rank_of_targets` ranks the target among all N
items by dot product: ``rank = 1 + #items scoring strictly higher`` (ties count in the target's favour);
a target absent from the N items gets rank ``N + 1``, a miss. Then

- ``recall@k`` = mean of ``rank <= k`` (:func:`recall_at`); ``mrr`` = mean of ``1 / rank``
  (:func:`reciprocal_rank`, 0 for a miss when the number of items is known).

Per impression (shown, clicked or not), with its raw score and the probability ``p`` of the online
:class:`PlattScaler` *before* it learns from the impression:

- ``auc`` = P(score of a random clicked > score of a random unclicked), ties counting one half, computed
  exactly from ranks (Mann–Whitney U, :func:`auc`), on raw scores; undefined with one class only;
- ``logloss`` = mean of ``-(y log p + (1 - y) log(1 - p))``, ``p`` clipped to ``[eps, 1 - eps]``.

:class:`Prequential` keeps both windows and makes JSON-ready snapshots (``None`` where undefined),
:class:`MetricsLog` appends them to a JSONL file; :mod:`online_learning.bootstrap` gives intervals
for the difference between two models scored on the same samples.

>>> ev = Prequential(window=1000, ks=(1, 2))
>>> ev.add_ranking(np.array([1, 3]))
>>> _ = ev.add_impressions(np.array([2.0, -1.0, 0.5]), np.array([1, 0, 0]))
>>> snap = ev.snapshot()
>>> snap["recall@1"], snap["recall@2"], snap["mrr"], snap["auc"], snap["positives"], snap["impressions"]
(0.5, 0.5, 0.6666666666666666, 1.0, 2, 3)
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from types import TracebackType
from typing import Any

import msgspec
import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["MetricsLog", "PlattScaler", "Prequential", "SlidingWindow", "auc", "logloss", "rank_of_targets",
           "recall_at", "reciprocal_rank"]

CHUNK = 65_536  # items per matrix product in rank_of_targets: a (B, CHUNK) float32 block at a time


def _masked_cells(targets: NDArray[np.int64], exclude: ArrayLike | None, n: int) -> tuple[NDArray[np.intp], ...]:
    """(rows, cols) of the cells kept out of the competition (each row's target and its excluded items),
    sorted by column."""
    b = targets.shape[0]
    rows, cols = [np.flatnonzero(targets >= 0)], [targets[targets >= 0]]
    if exclude is not None:
        ex = np.asarray(exclude, dtype=np.int64)
        if ex.ndim == 1:
            ex = np.broadcast_to(ex, (b, ex.shape[0]))
        if ex.ndim != 2 or ex.shape[0] != b:
            msg = f"exclude must have shape (B, m) or (m,), got {ex.shape} for B={b}"
            raise ValueError(msg)
        if np.any((ex < -1) | (ex >= n)):
            msg = f"exclude holds item indices in [0, {n}) or -1 (padding)"
            raise ValueError(msg)
        r, c = np.nonzero(ex >= 0)
        rows.append(r)
        cols.append(ex[r, c])
    row, col = np.concatenate(rows).astype(np.intp), np.concatenate(cols).astype(np.intp)
    order = np.argsort(col, kind="stable")
    return row[order], col[order]


def rank_of_targets(user_vecs: ArrayLike, item_vecs: ArrayLike, targets: ArrayLike,
                    exclude: ArrayLike | None = None, chunk: int = CHUNK) -> NDArray[np.int64]:
    """1-based rank of each row's target item among all N items, by dot product in float32.

    ``rank = 1 + #items scoring strictly higher than the target`` (ties are optimistic: equal scores do
    not count against it; the target never competes with itself). ``targets[i] == -1`` (target not among
    the items) gives rank ``N + 1``, a miss. ``exclude`` (``(B, m)`` item indices per row, ``-1``
    padded, or ``(m,)`` for every row) removes items from row ``i``'s competition, e.g. items already
    seen; N stays the same. Items are scored ``chunk`` at a time: memory is ``B * chunk * 4`` bytes.
    Scores within float32 rounding of the target's may fall either side of it.

    >>> items = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
    >>> rank_of_targets(np.array([[1.0, 0.0], [1.0, 2.0], [1.0, 0.0]]), items, np.array([0, 1, -1]))
    array([1, 2, 5])
    >>> rank_of_targets(np.array([[0.0, 1.0]]), items, np.array([1]), exclude=np.array([[2, -1]]))
    array([1])
    """
    u = np.ascontiguousarray(user_vecs, dtype=np.float32)
    items = np.asarray(item_vecs, dtype=np.float32)
    t = np.asarray(targets, dtype=np.int64)
    if u.ndim != 2 or items.ndim != 2 or u.shape[1] != items.shape[1] or t.shape != (u.shape[0],) or chunk < 1:
        msg = f"want user_vecs (B, d), item_vecs (N, d), targets (B,), chunk >= 1; got {u.shape}, {items.shape}, " \
              f"{t.shape}, {chunk}"
        raise ValueError(msg)
    n = items.shape[0]
    if np.any((t < -1) | (t >= n)):
        msg = f"targets must be item indices in [0, {n}) or -1 (not among the items)"
        raise ValueError(msg)
    hit = t >= 0
    own = np.full(u.shape[0], np.inf, dtype=np.float32)  # a miss: nothing counted, its rank is set below
    own[hit] = np.einsum("bd,bd->b", u[hit], items[t[hit]])
    rows, cols = _masked_cells(t, exclude, n)
    higher = np.zeros(u.shape[0], dtype=np.int64)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        scores = u @ items[start:stop].T
        lo, hi = np.searchsorted(cols, [start, stop])
        scores[rows[lo:hi], cols[lo:hi] - start] = -np.inf
        higher += np.count_nonzero(scores > own[:, None], axis=1)
    ranks = higher + 1
    ranks[~hit] = n + 1
    return ranks


def _aligned(values: ArrayLike, labels: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Both as flat float64 arrays, which must have the same length."""
    v, y = np.asarray(values, dtype=np.float64).ravel(), np.asarray(labels, dtype=np.float64).ravel()
    if v.shape != y.shape:
        msg = f"values and labels differ in length: {v.shape} vs {y.shape}"
        raise ValueError(msg)
    return v, y


def recall_at(ranks: ArrayLike, k: int, n_items: int | None = None) -> NDArray[np.float64]:
    """Per sample, 1.0 if its rank is within the top ``k``, else 0.0; with ``n_items`` given, ranks beyond
    it (misses) score 0 even when ``k > n_items``.

    >>> recall_at(np.array([1, 10, 11]), 10), recall_at(np.array([1, 6]), 10, n_items=5)
    (array([1., 1., 0.]), array([1., 0.]))
    """
    r = np.asarray(ranks)
    return ((r <= k) & (r <= (n_items if n_items is not None else k))).astype(np.float64)


def reciprocal_rank(ranks: ArrayLike, n_items: int | None = None) -> NDArray[np.float64]:
    """Per sample, ``1 / rank``; with ``n_items`` given, ranks beyond it (misses) score 0.

    >>> reciprocal_rank(np.array([1, 4, 6]), n_items=5)
    array([1.  , 0.25, 0.  ])
    """
    r = np.asarray(ranks, dtype=np.float64)
    if n_items is not None:
        r = np.where(r > n_items, np.inf, r)
    return 1.0 / r


def auc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Exact ROC AUC from the ranks of the scores, ties averaged (Mann–Whitney U); NaN with one class.

    ``labels`` are 0/1 (or bool).

    >>> auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
    0.75
    >>> auc(np.array([1.0, 1.0]), np.array([0, 1])), auc(np.array([1.0]), np.array([1]))
    (0.5, nan)
    """
    s, labels01 = _aligned(scores, labels)
    y = labels01 != 0
    pos = int(np.count_nonzero(y))
    neg = int(y.size) - pos
    if pos == 0 or neg == 0:
        return math.nan
    _, group, counts = np.unique(s, return_inverse=True, return_counts=True)
    mid_rank = np.cumsum(counts) - (counts - 1) / 2.0  # the average 1-based rank of each group of ties
    u = float(mid_rank[group][y].sum()) - pos * (pos + 1) / 2.0
    return u / (pos * neg)


def logloss(p: ArrayLike, labels: ArrayLike, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy of probabilities ``p`` clipped to ``[eps, 1 - eps]``; NaN when empty.

    >>> round(logloss(np.array([0.9, 0.2]), np.array([1, 0])), 4)
    0.1643
    >>> logloss(np.array([0.0]), np.array([1])) == -math.log(1e-7)
    True
    """
    q, y = _aligned(p, labels)
    if q.size == 0:
        return math.nan
    q = np.clip(q, eps, 1.0 - eps)
    return float(-np.mean(y * np.log(q) + (1.0 - y) * np.log1p(-q)))


def _sigmoid(z: NDArray[np.float64]) -> NDArray[np.float64]:
    out: NDArray[np.float64] = np.exp(-np.logaddexp(0.0, -z))
    return out


class SlidingWindow:
    """The last ``size`` values of each named series, in numpy ring buffers (created on first use).

    >>> w = SlidingWindow(3)
    >>> w.extend("x", [1, 2]); w.extend("x", [3, 4])
    >>> w.values("x"), w.mean("x"), w.count("x"), w.count("y")
    (array([2., 3., 4.]), 3.0, 3, 0)
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            msg = "SlidingWindow size must be >= 1"
            raise ValueError(msg)
        self.size = size
        self._buf: dict[str, NDArray[np.float64]] = {}
        self._pos: dict[str, int] = {}  # where the next value goes (the oldest value once full)
        self._count: dict[str, int] = {}

    def extend(self, name: str, values: ArrayLike) -> None:
        """Append values to series ``name``, dropping the oldest beyond ``size``."""
        v = np.asarray(values, dtype=np.float64).ravel()
        buf = self._buf.get(name)
        if buf is None:
            buf = self._buf[name] = np.zeros(self.size)
            self._pos[name] = self._count[name] = 0
        size, pos = self.size, self._pos[name]
        if v.size >= size:
            buf[:] = v[-size:]
            pos = 0
        else:
            head = min(v.size, size - pos)
            buf[pos:pos + head] = v[:head]
            buf[:v.size - head] = v[head:]
            pos = (pos + v.size) % size
        self._pos[name] = pos
        self._count[name] = min(size, self._count[name] + v.size)

    def values(self, name: str) -> NDArray[np.float64]:
        """A copy of the series' values held, oldest first (empty for an unknown name)."""
        n = self._count.get(name, 0)
        if n == 0:
            return np.zeros(0)
        buf, pos = self._buf[name], self._pos[name]
        return buf[:n].copy() if n < self.size else np.concatenate((buf[pos:], buf[:pos]))

    def mean(self, name: str) -> float:
        """Mean of the values held; NaN when there are none."""
        n = self._count.get(name, 0)
        return float(self._buf[name][:n].mean()) if n else math.nan

    def count(self, name: str) -> int:
        """How many values of the series are held (at most ``size``)."""
        return self._count.get(name, 0)


class PlattScaler:
    """Online calibration ``p = sigmoid(a * score + b)``, starting at ``a = 1, b = 0``.

    It keeps the last ``memory`` ``(score, label)`` pairs; each :meth:`update` adds a batch and takes
    ``steps`` damped Newton steps, warm-started at the current ``(a, b)``, on their log-loss plus
    ``prior / 2 * |(a, b) - (1, 0)|^2`` (keeps the fit finite on separable data). So ``(a, b)`` tracks the
    fit on the most recent ``memory`` impressions. Deterministic. Callers :meth:`predict` a batch before
    they :meth:`update` on it.

    >>> cal = PlattScaler()
    >>> cal.predict(np.array([0.0, 2.0])).round(3)
    array([0.5  , 0.881])
    >>> rng = np.random.default_rng(0)
    >>> for _ in range(20):
    ...     s = rng.normal(size=500)
    ...     cal.update(s, rng.random(500) < 1 / (1 + np.exp(-(3 * s - 1))))
    >>> round(cal.a), round(cal.b)
    (3, -1)
    """

    def __init__(self, steps: int = 3, memory: int = 100_000, prior: float = 1.0) -> None:
        if steps < 1 or prior <= 0:
            msg = "PlattScaler needs steps >= 1 and prior > 0"
            raise ValueError(msg)
        self.a, self.b = 1.0, 0.0
        self.steps, self.prior = steps, prior
        self._seen = SlidingWindow(memory)

    def predict(self, scores: ArrayLike) -> NDArray[np.float64]:
        """Calibrated click probabilities of ``scores``."""
        return _sigmoid(self.a * np.asarray(scores, dtype=np.float64) + self.b)

    def update(self, scores: ArrayLike, labels: ArrayLike) -> None:
        """Learn from a batch of ``(score, label)`` (labels 0/1)."""
        s, y = _aligned(scores, labels)
        if s.size == 0:
            return
        self._seen.extend("score", s)
        self._seen.extend("label", y)
        x = np.stack([self._seen.values("score"), np.ones(self._seen.count("score"))], axis=1)
        y, origin = self._seen.values("label"), np.array([1.0, 0.0])

        def objective(theta: NDArray[np.float64]) -> float:
            z, d = x @ theta, theta - origin
            return float(np.sum(np.logaddexp(0.0, z) - y * z) + 0.5 * self.prior * d @ d)

        theta = np.array([self.a, self.b])
        for _ in range(self.steps):
            p = _sigmoid(x @ theta)
            grad = x.T @ (p - y) + self.prior * (theta - origin)
            hess = (x * (p * (1.0 - p))[:, None]).T @ x + self.prior * np.eye(2)
            step = np.linalg.solve(hess, grad)
            if np.abs(step).max() < 1e-9:
                break
            current, t = objective(theta), 1.0
            while t > 1e-6 and objective(theta - t * step) > current:  # damped: never worse than before
                t /= 2.0
            if t <= 1e-6:
                break
            theta = theta - t * step
        self.a, self.b = float(theta[0]), float(theta[1])


def _defined(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


class Prequential:
    """Windowed prequential metrics: rankings of positives and calibrated impressions (module docstring).

    Series in :attr:`window`: ``rank`` (misses as ``inf``), ``score``, ``p``, ``label``.
    """

    def __init__(self, window: int, ks: tuple[int, ...] = (10, 50), scaler: PlattScaler | None = None) -> None:
        self.ks = tuple(ks)
        self.window = SlidingWindow(window)
        self.scaler = scaler if scaler is not None else PlattScaler()

    def add_ranking(self, ranks: ArrayLike, n_items: int | None = None) -> None:
        """Record the ranks of a batch of positives (from :func:`rank_of_targets`, before training on them);
        with ``n_items``, ranks beyond it are misses (recall 0, reciprocal rank 0)."""
        r = np.asarray(ranks, dtype=np.float64).ravel()
        if np.any(r < 1):
            msg = "ranks are 1-based"
            raise ValueError(msg)
        if n_items is not None:
            r = np.where(r > n_items, np.inf, r)
        self.window.extend("rank", r)

    def add_impressions(self, scores: ArrayLike, labels: ArrayLike) -> NDArray[np.float64]:
        """Record a batch of impressions (raw scores, clicked 0/1): calibrate them with the scaler as it
        stands, then update it on them; returns the probabilities recorded."""
        s, y = _aligned(scores, labels)
        p = self.scaler.predict(s)
        self.scaler.update(s, y)
        for name, v in (("score", s), ("p", p), ("label", y)):
            self.window.extend(name, v)
        return p

    def snapshot(self) -> dict[str, float | None]:
        """``recall@k`` per k, ``mrr``, ``auc``, ``logloss`` (``None`` where undefined), and the window's
        ``positives`` and ``impressions`` counts."""
        w = self.window
        ranks = w.values("rank")
        out: dict[str, float | None] = {}
        for k in self.ks:
            out[f"recall@{k}"] = float(np.mean(ranks <= k)) if ranks.size else None
        out["mrr"] = float(np.mean(1.0 / ranks)) if ranks.size else None
        labels = w.values("label")
        out["auc"] = _defined(auc(w.values("score"), labels))
        out["logloss"] = _defined(logloss(w.values("p"), labels))
        out["positives"], out["impressions"] = w.count("rank"), w.count("label")
        return out


def _to_builtin(obj: Any) -> Any:
    if isinstance(obj, np.generic | np.ndarray):
        return obj.tolist()
    msg = f"cannot write {type(obj).__name__} to a metrics log"
    raise TypeError(msg)


class MetricsLog:
    """Append-only JSONL: one line per :meth:`write`, flushed (NaN and inf are written as null).

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d, MetricsLog(Path(d) / "m" / "log.jsonl") as log:
    ...     log.write({"step": 1, "auc": np.float64(0.7)}); log.write({"step": 2, "auc": math.nan})
    ...     MetricsLog.read(log.path)
    [{'step': 1, 'auc': 0.7}, {'step': 2, 'auc': None}]
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("ab")
        self._encoder = msgspec.json.Encoder(enc_hook=_to_builtin)

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(self._encoder.encode(record) + b"\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @staticmethod
    def read(path: Path) -> list[dict[str, Any]]:
        """The records of a log, in order; a torn last line (a write cut short) is left out."""
        lines = Path(path).read_bytes().split(b"\n")
        records = [msgspec.json.decode(line) for line in lines[:-1] if line.strip()]
        if lines[-1].strip():  # no newline yet: complete only if it parses
            with contextlib.suppress(msgspec.DecodeError):
                records.append(msgspec.json.decode(lines[-1]))
        return records
