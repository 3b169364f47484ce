"""Pure time-slice and sub-slice maths of the exposure filters, and their false-positive budget.

Time slices. Event time is cut into slices of ``L = slice_hours`` hours aligned to the UTC epoch; slice
``s`` covers ``[s·L, (s+1)·L)`` and is named by its start. With retention ``R = retention_days`` days a
slice is **live at time ``at``** iff ``start ≤ at`` and ``end > at − R``. Hence an exposure at ``ts`` is
reported seen for every ``at`` with ``ts's slice start ≤ at < slice end + R`` — always for at least R after
``ts`` (zero false negatives within retention) and forgotten once its whole slice is older than R. At most
``S = ⌈R/L⌉ + 1`` slices are live at once (31 for daily slices and 30 days).

FPR budget. δ (``settings.bloom.fpr``) is the false-positive rate of one whole query, i.e. of the OR of
all live slices of a user at design load. Each slice gets ``δ_slice = 1 − (1 − δ)^(1/S)`` (≈ δ/S).

Sub-slices (a scalable Bloom filter, Almeida et al. 2007, inside each slice). Sub-slice 0 holds
``c0 = slice_capacity`` items at ``(1 − ε)·δ_slice``; when it is full, sub-slice i ≥ 1 holds
``c0·2^i`` items (capped so m ≤ 2²¹ bits) at ``ε·δ_slice·(1 − r)·r^(i−1)``. The sum over all
sub-slices is < δ_slice for ANY load, while a design-load user spends ``1 − ε`` (95 %) of the budget in
sub-slice 0 (it costs only ln(1/(1 − ε)) / ln(1/δ_slice) ≈ 0.6 % more bits than a single-filter slice).

>>> plan = SlicePlan.from_settings(BloomSettings())
>>> plan.live_slices, round(plan.slice_fpr, 7)
(31, 0.0003242)
>>> p0 = plan.sub(0); (p0.m, p0.k, p0.capacity)
(3367, 12, 200)
>>> live = plan.live_starts(at=40 * DAY + 5)
>>> len(live), live[0] // DAY, live[-1] // DAY
(31, 10, 40)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

from filters.bloom import MAX_BITS_EXACT, false_positive_rate, optimal_bits, optimal_hashes
from infra.errors import ConfigError
from infra.settings import MS_PER_DAY, MS_PER_HOUR, BloomSettings

DAY = MS_PER_DAY
#: Share of a slice's FPR budget reserved for overflow sub-slices (ε) and their geometric ratio (r).
OVERFLOW_SHARE = 0.05
OVERFLOW_RATIO = 0.5
CAPACITY_GROWTH = 2
#: Sub-slices per slice; beyond this the last one keeps filling (only reachable by >1e6 items/slice).
MAX_SUBSLICES = 64


def slice_start(ts_ms: int, slice_ms: int) -> int:
    """Start of the slice holding ``ts_ms`` (floor, also for negative timestamps).

    >>> slice_start(DAY + 5, DAY), slice_start(-1, DAY)
    (86400000, -86400000)
    """
    return ts_ms - ts_ms % slice_ms


@dataclass(frozen=True)
class SubParams:
    """Size of one sub-slice bitmap: bits, hash count, capacity (items before the next sub-slice)."""

    m: int
    k: int
    capacity: int
    fpr: float

    @property
    def nbytes(self) -> int:
        return (self.m + 7) // 8

    def encode(self) -> str:
        """The form stored in the index hash: ``"m,k,capacity"``.

        >>> SubParams(3367, 12, 200, 3e-4).encode()
        '3367,12,200'
        """
        return f"{self.m},{self.k},{self.capacity}"


def decode_params(text: str | bytes) -> tuple[int, int, int]:
    """Inverse of :meth:`SubParams.encode` -> ``(m, k, capacity)``.

    >>> decode_params(b"3367,12,200")
    (3367, 12, 200)
    """
    if isinstance(text, bytes):
        text = text.decode()
    m, k, cap = (int(x) for x in text.split(","))
    return m, k, cap


@dataclass(frozen=True)
class SlicePlan:
    """Slice length, retention, and the per-sub-slice parameter table derived from the settings."""

    fpr: float
    slice_ms: int
    retention_ms: int
    capacity: int
    hash_version: int = 1
    overflow_share: float = OVERFLOW_SHARE
    overflow_ratio: float = OVERFLOW_RATIO

    def __post_init__(self) -> None:
        if not 0 < self.fpr < 0.5 or self.slice_ms < 1 or self.retention_ms < 1 or self.capacity < 1:
            msg = f"invalid slice plan {self}"
            raise ConfigError(msg)

    @classmethod
    def from_settings(cls, bloom: BloomSettings) -> SlicePlan:
        return cls(
            fpr=bloom.fpr,
            slice_ms=bloom.slice_hours * MS_PER_HOUR,
            retention_ms=bloom.retention_days * MS_PER_DAY,
            capacity=bloom.slice_capacity,
            hash_version=bloom.hash_version,
        )

    # --- time --------------------------------------------------------------------------------------
    @property
    def live_slices(self) -> int:
        """Most slices live at once: ⌈R/L⌉ + 1."""
        return -(-self.retention_ms // self.slice_ms) + 1

    def start_of(self, ts_ms: int) -> int:
        return slice_start(ts_ms, self.slice_ms)

    def is_live(self, start_ms: int, at_ms: int, end_ms: int | None = None) -> bool:
        """Is the slice starting at ``start_ms`` (ending at ``end_ms``, default start + L) live at ``at``?

        >>> plan = SlicePlan(0.01, DAY, 30 * DAY, 200)
        >>> plan.is_live(0, 31 * DAY - 1), plan.is_live(0, 31 * DAY), plan.is_live(DAY, DAY - 1)
        (True, False, False)
        """
        end = start_ms + self.slice_ms if end_ms is None else end_ms
        return start_ms <= at_ms and end > at_ms - self.retention_ms

    def live_starts(self, at: int) -> list[int]:
        """Starts of every slice live at ``at``, oldest first."""
        first = self.start_of(at - self.retention_ms)
        return list(range(first, self.start_of(at) + 1, self.slice_ms))

    def expired(self, end_ms: int, watermark_ms: int) -> bool:
        """Writer side: a slice ending at ``end_ms`` can be deleted once ``end ≤ watermark − R``."""
        return end_ms <= watermark_ms - self.retention_ms

    def writable_start(self, ts_ms: int, watermark_ms: int) -> int | None:
        """Writer side: the start of the slice an impression at ``ts_ms`` goes to, or ``None`` when that
        slice has already expired at ``watermark_ms`` (the impression is skipped).

        >>> plan = SlicePlan(0.01, DAY, 30 * DAY, 200)
        >>> plan.writable_start(DAY + 5, 31 * DAY), plan.writable_start(DAY + 5, 32 * DAY)
        (86400000, None)
        """
        start = self.start_of(ts_ms)
        return None if self.expired(start + self.slice_ms, watermark_ms) else start

    def key_ttl_s(self, safety_days: int) -> int:
        """The wall-clock safety TTL of filter keys: retention + slice length + ``safety_days``, in seconds.

        >>> SlicePlan(0.01, DAY, 30 * DAY, 200).key_ttl_s(7) // 86_400
        38
        """
        return (self.retention_ms + self.slice_ms + safety_days * MS_PER_DAY) // 1000

    # --- sizing ------------------------------------------------------------------------------------
    @cached_property
    def slice_fpr(self) -> float:
        """Budget of one slice so that S slices ORed stay at δ: 1 − (1 − δ)^(1/S)."""
        return float(1.0 - (1.0 - self.fpr) ** (1.0 / self.live_slices))

    def sub_fpr(self, i: int) -> float:
        """FPR target of sub-slice ``i``; the series sums to ``slice_fpr`` (limit) for any load."""
        if i == 0:
            return (1.0 - self.overflow_share) * self.slice_fpr
        r = self.overflow_ratio
        return self.overflow_share * self.slice_fpr * (1.0 - r) * r ** (i - 1)

    def sub(self, i: int) -> SubParams:
        """Parameters of sub-slice ``i`` (``i`` ≥ MAX_SUBSLICES reuses the last one)."""
        return self.table[min(i, MAX_SUBSLICES - 1)]

    @cached_property
    def lua_table(self) -> str:
        """The sub-slice table as the scripts take it: ``"m,k,cap;m,k,cap;…"`` for sub-slice 0, 1, …"""
        return ";".join(p.encode() for p in self.table)

    @cached_property
    def table(self) -> tuple[SubParams, ...]:
        out = []
        for i in range(MAX_SUBSLICES):
            fpr = self.sub_fpr(i)
            cap = self.capacity * CAPACITY_GROWTH ** min(i, 40)
            per_item = -math.log(fpr) / (math.log(2) ** 2)
            cap = max(1, min(cap, int(MAX_BITS_EXACT / (per_item * 1.001))))
            m = optimal_bits(cap, fpr)
            k = optimal_hashes(m, cap)
            while false_positive_rate(m, cap, k) > fpr:  # integer k can overshoot the target slightly
                m += max(1, m // 5000)
                k = optimal_hashes(m, cap)
            out.append(SubParams(m, k, cap, fpr))
        return tuple(out)

    def subs_for(self, items: int) -> int:
        """How many sub-slices a slice with ``items`` distinct items uses.

        >>> plan = SlicePlan(0.01, DAY, 30 * DAY, 200)
        >>> [plan.subs_for(n) for n in (0, 200, 201, 600, 601, 2000)]
        [1, 1, 2, 2, 3, 4]
        """
        subs, total = 1, self.table[0].capacity
        while items > total and subs < MAX_SUBSLICES:
            total += self.sub(subs).capacity
            subs += 1
        return subs

    def expected_slice_fpr(self, items: int) -> float:
        """Predicted FPR of one slice holding ``items`` distinct items (union bound over sub-slices)."""
        left, total, i = items, 0.0, 0
        while True:
            p = self.sub(i)
            n = min(left, p.capacity) if i < MAX_SUBSLICES - 1 else left
            total += false_positive_rate(p.m, n, p.k)
            left -= n
            i += 1
            if left <= 0:
                return total

    def expected_query_fpr(self, items_per_slice: int) -> float:
        """Predicted FPR of a query over all live slices, each holding ``items_per_slice`` items."""
        return 1.0 - (1.0 - self.expected_slice_fpr(items_per_slice)) ** self.live_slices

    def bytes_for(self, items: int) -> int:
        """Bitmap bytes one slice with ``items`` distinct items occupies."""
        return sum(self.sub(i).nbytes for i in range(self.subs_for(items)))

    def memory_ratio(self) -> float:
        """Bytes of all live slices at design load over one optimally sized filter for the retention.

        >>> round(SlicePlan(0.01, DAY, 30 * DAY, 200).memory_ratio(), 2)
        1.82
        """
        month_items = self.capacity * self.retention_ms // self.slice_ms
        month_bytes = (optimal_bits(month_items, self.fpr) + 7) // 8
        return self.live_slices * self.bytes_for(self.capacity) / month_bytes
