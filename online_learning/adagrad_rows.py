"""Adagrad on the rows of one embedding table: the update under :class:`online_learning.model.RowAdagrad`.

A step's row gradients arrive uncoalesced (a row used twice appears twice). A compiled pass (numba) sums
them per row in arrival order, without a sort, and adds their squares to the accumulator; torch's own
ops then apply ``torch.optim.Adagrad``'s rule to the distinct rows only, in float32:
``w -= lr * (g / (sqrt(acc) + eps))``. torch's sparse path (``coalesce`` with a sort, then index
operations over the table) took ~8 of a ~15 ms step for 1,024 positives with 50-item histories (~27k
gradient rows) on this machine; this takes ~3 (docs/learning.md).

>>> w, acc = np.ones((4, 2), np.float32), np.zeros((4, 2), np.float32)
>>> slots = np.full(4, -1, np.int64)
>>> adagrad_rows(w, acc, np.array([2, 0, 2]), np.array([[1, 1], [2, 0], [1, 0]], np.float32), 0.5, 1e-10, slots)
>>> acc.tolist(), w[2].tolist(), w[1].tolist(), int(slots.max())
([[4.0, 0.0], [0.0, 0.0], [4.0, 1.0], [0.0, 0.0]], [0.5, 0.5], [1.0, 1.0], -1)
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch
from numba import njit

__all__ = ["adagrad_rows"]


def adagrad_rows(weight: npt.NDArray[np.float32], acc: npt.NDArray[np.float32], rows: npt.NDArray[np.int64],
                 grads: npt.NDArray[np.float32], lr: float, eps: float, slots: npt.NDArray[np.int64]) -> None:
    """Update ``weight`` and its accumulator ``acc`` (both ``(R, D)`` float32, C-contiguous, in place) with
    the row gradients ``grads[k]`` of ``rows[k]``. ``slots`` is the caller's scratch of ``R`` entries, all
    ``-1`` (and left so): it maps a row to its place among the step's distinct rows without a sort."""
    if rows.shape[0] != grads.shape[0] or grads.shape[1] != weight.shape[1] or acc.shape != weight.shape \
            or slots.shape[0] != weight.shape[0]:
        msg = f"shapes differ: weight {weight.shape}, acc {acc.shape}, rows {rows.shape}, grads {grads.shape}, " \
              f"slots {slots.shape}"
        raise ValueError(msg)
    if rows.shape[0] and not 0 <= int(rows.min()) <= int(rows.max()) < weight.shape[0]:
        msg = f"rows must lie in 0..{weight.shape[0] - 1}, got {int(rows.min())}..{int(rows.max())}"
        raise ValueError(msg)
    distinct, summed = _sum_repeats(np.ascontiguousarray(rows, np.int64), np.ascontiguousarray(grads, np.float32),
                                    slots)
    total = torch.from_numpy(_accumulate(acc, distinct, summed))
    # the rule in torch's own ops (SIMD, rounded as torch.optim.Adagrad rounds; numpy's float32 sqrt can
    # differ from torch's in the last bit), over the compact distinct rows: one index_add_ into the table
    steps = torch.from_numpy(summed).div_(total.sqrt_().add_(eps))
    torch.from_numpy(weight).index_add_(0, torch.from_numpy(distinct), steps, alpha=-lr)


@njit(cache=True, nogil=True)
def _sum_repeats(rows: npt.NDArray[np.int64], grads: npt.NDArray[np.float32],  # pragma: no cover - compiled
                 slots: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """The distinct rows in order of first arrival and each one's summed gradient, in arrival order
    (``slots`` left all -1). torch's ``coalesce`` sums a row's repeats in another order: the sums agree
    to float32 rounding (a last-bit difference), not bit for bit."""
    n, d = grads.shape
    distinct = np.empty(n, np.int64)
    summed = np.empty((n, d), np.float32)
    m = 0
    for k in range(n):
        r = rows[k]
        s = slots[r]
        if s < 0:
            s = m
            slots[r], distinct[m] = s, r
            m += 1
            for j in range(d):
                summed[s, j] = grads[k, j]
        else:
            for j in range(d):
                summed[s, j] += grads[k, j]
    for s in range(m):
        slots[distinct[s]] = -1
    return distinct[:m], summed[:m]


@njit(cache=True, nogil=True)
def _accumulate(acc: npt.NDArray[np.float32], rows: npt.NDArray[np.int64],  # pragma: no cover - compiled
                summed: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """``acc[rows[s]] += summed[s] ** 2`` (distinct rows); returns the new accumulator rows, compact."""
    total = np.empty_like(summed)
    for s in range(rows.shape[0]):
        r = rows[s]
        for j in range(summed.shape[1]):
            x = acc[r, j] + summed[s, j] * summed[s, j]
            acc[r, j] = x
            total[s, j] = x
    return total
