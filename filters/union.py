"""Membership in the union of many same-shape Bloom filters: the compute of ``filter_unseen``.

A query asks, for each candidate, whether any of a user's live slice filters (same m, k) contains it.
The bitmaps are bit-transposed so that one 64-bit word holds the same bit offset of up to 64 filters;
a probe then tests every filter at once and the k probes are ANDed word-wise. A word that drops to
zero ends the candidate early (a non-member is usually out after 6–8 of the k = 12 probes).

Both steps run in one compiled loop (numba, compiled on first use and cached on disk): the same work
in numpy ops measured 55 µs for 1,000 candidates over 31 slices, the loop 12–14 µs. The loop evaluates
exactly the probe formula of :func:`filters.bloom.positions` (tests compare the two).

>>> from filters.bloom import BloomFilter, item_hashes
>>> a, b = BloomFilter.for_capacity(10, 0.01), BloomFilter.for_capacity(10, 0.01)
>>> _ = a.add_many(["x"]); _ = b.add_many(["y"])
>>> union_contains([a.to_bytes(), b.to_bytes()], a.m, a.k, item_hashes(["x", "y", "z"])).tolist()
[True, True, False]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from numba import njit

from filters.bloom import BoolArray, Hashes
from infra.errors import InputError

#: Filters tested together: one bit of a uint64 word each.
GROUP = 64
U8Array = npt.NDArray[np.uint8]


def union_contains(bitmaps: Sequence[bytes], m: int, k: int, hashes: Hashes) -> BoolArray:
    """For each item (columns of ``hashes``): is it in at least one of ``bitmaps``?

    Every bitmap is a filter of ``m`` bits and ``k`` probes in Redis bit order. Bitmaps shorter than
    ⌈m/8⌉ bytes (a Redis key never written that far) are zero-padded; longer ones are cut to ⌈m/8⌉.
    """
    n = hashes.shape[1]
    seen = np.zeros(n, dtype=np.bool_)
    if not bitmaps or n == 0:
        return seen
    if not 0 < m < 1 << 32:
        msg = f"union membership needs 0 < m < 2^32 bits, got {m}"
        raise InputError(msg)
    nbytes = (m + 7) // 8
    h = np.ascontiguousarray(hashes, dtype=np.uint32)
    for start in range(0, len(bitmaps), GROUP):
        seen |= _union_kernel(_rows(bitmaps[start : start + GROUP], nbytes), h, m, k)
    return seen


def _rows(chunk: Sequence[bytes], nbytes: int) -> U8Array:
    """The bitmaps as a (multiple of 8, nbytes) uint8 matrix, zero rows and bytes as padding."""
    height = (len(chunk) + 7) // 8 * 8
    if all(len(b) == nbytes for b in chunk):
        raw = b"".join(chunk) + bytes((height - len(chunk)) * nbytes)
        return np.frombuffer(raw, dtype=np.uint8).reshape(height, nbytes)
    rows = np.zeros((height, nbytes), dtype=np.uint8)
    for r, b in enumerate(chunk):
        data = np.frombuffer(b[:nbytes], dtype=np.uint8)
        rows[r, : data.shape[0]] = data
    return rows


@njit(cache=True, nogil=True)
def _union_kernel(rows: U8Array, hashes: Hashes, m: int, k: int) -> BoolArray:  # pragma: no cover - compiled
    """Transpose ``rows`` (≤ 64 bitmaps) into words, then probe every item; True = in some bitmap."""
    nbytes = rows.shape[1]
    words = np.zeros(nbytes * 8, np.uint64)
    m1, m2, m3 = np.uint64(0x00AA00AA00AA00AA), np.uint64(0x0000CCCC0000CCCC), np.uint64(0x00000000F0F0F0F0)
    for g in range(rows.shape[0] // 8):
        lane = np.uint64(8 * g)
        for b in range(nbytes):
            # byte i of x = byte b of bitmap 8g+i; an 8x8 bit transpose makes byte 7-j of x hold
            # bit offset 8b+j (Redis order: MSB first) of the 8 bitmaps.
            x = np.uint64(0)
            for i in range(8):
                x |= np.uint64(rows[8 * g + i, b]) << np.uint64(8 * i)
            if x == 0:
                continue
            t = (x ^ (x >> np.uint64(7))) & m1
            x = x ^ t ^ (t << np.uint64(7))
            t = (x ^ (x >> np.uint64(14))) & m2
            x = x ^ t ^ (t << np.uint64(14))
            t = (x ^ (x >> np.uint64(28))) & m3
            x = x ^ t ^ (t << np.uint64(28))
            for j in range(8):
                words[8 * b + j] |= ((x >> np.uint64(56 - 8 * j)) & np.uint64(0xFF)) << lane
    n = hashes.shape[1]
    out = np.zeros(n, np.bool_)
    low32 = np.uint64(0xFFFFFFFF)
    mm = np.uint64(m)
    for c in range(n):
        # x_j = h1 + j·h2 + j(j−1)/2·h3 (mod 2^32), stepped: x_{j+1} = x_j + (h2 + j·h3)
        x = np.uint64(hashes[0, c])
        step = np.uint64(hashes[1, c])
        h3 = np.uint64(hashes[2, c])
        acc = ~np.uint64(0)
        for _ in range(k):
            acc &= words[(x * mm) >> np.uint64(32)]
            if acc == 0:
                break
            x = (x + step) & low32
            step = (step + h3) & low32
        out[c] = acc != 0
    return out
