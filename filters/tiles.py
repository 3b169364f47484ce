"""Shared time tiles for windowed statistics: the pure maths (see docs/statistics.md).

Every window is answered from the rings of its tile size; each distinct tile size is a ring of ``R``
slots. One slot is 7 big-endian ``u32`` words: the slot's *epoch* (tile index + 1, 0 = empty) and one
counter per event type (``impression`` then the 5 actions). An entity's blob is one header word (the
layout fingerprint) followed by every ring's slots, so all windows of one entity are one Redis string.

>>> layout = TileLayout.build({"1h": "5m", "1d": "1h"}, allowed_lateness_ms=3_600_000)
>>> [(r.tile_ms, r.slots) for r in layout.rings], layout.nbytes
([(300000, 25), (3600000, 26)], 1432)
>>> words = empty_words(layout)
>>> apply_events(words, layout, [(7_200_000 + 1, 1), (7_200_000 - 1, 1), (3_000, 0)])
>>> window_counts(decode_blobs([encode_words(words)], layout), layout, 7_200_000, ["1h", "1d"])[0]
array([[0, 1, 0, 0, 0, 0],
       [1, 1, 0, 0, 0, 0]])
"""

from __future__ import annotations

import itertools
import math
import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from numba import njit

from filters.events import EVENT_TYPES
from infra.errors import ConfigError
from infra.settings import StatsSettings

__all__ = [
    "COUNTERS",
    "WORDS_PER_SLOT",
    "Ring",
    "TileLayout",
    "Window",
    "aggregate_cells",
    "apply_events",
    "decode_blobs",
    "empty_words",
    "encode_words",
    "parse_duration",
    "tile_index",
    "window_counts",
]

COUNTERS: tuple[str, ...] = EVENT_TYPES
"""Counter order inside a slot (the event type index used everywhere, also in Lua)."""
WORDS_PER_SLOT = 1 + len(COUNTERS)
HEADER_WORDS = 1
U32_MAX = 0xFFFF_FFFF
MAX_TS_MS = 10_000_000_000_000  # the event contract's upper bound on ts
_UNITS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 7 * 86_400_000}
_DURATION = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d|w)\s*$")


def parse_duration(text: str) -> int:
    """Milliseconds in a duration such as ``"5m"``, ``"1h"``, ``"30d"`` (units ms, s, m, h, d, w).

    >>> parse_duration("5m"), parse_duration("1d"), parse_duration("2w")
    (300000, 86400000, 1209600000)
    >>> parse_duration("1y")
    Traceback (most recent call last):
    ...
    infra.errors.ConfigError: invalid duration '1y' (expected e.g. 5m, 1h, 7d)
    """
    match = _DURATION.match(text)
    if not match or int(match.group(1)) == 0:
        msg = f"invalid duration {text!r} (expected e.g. 5m, 1h, 7d)"
        raise ConfigError(msg)
    return int(match.group(1)) * _UNITS[match.group(2)]


def tile_index(ts_ms: int, tile_ms: int) -> int:
    """The tile holding ``ts_ms``: tile ``k`` covers ``[k * tile_ms, (k + 1) * tile_ms)`` (UTC epoch).

    >>> tile_index(0, 300_000), tile_index(299_999, 300_000), tile_index(300_000, 300_000)
    (0, 0, 1)
    """
    return ts_ms // tile_ms


@dataclass(frozen=True)
class Ring:
    """One tile size: ``slots`` slots starting at word ``word_offset`` of the blob."""

    tile_ms: int
    slots: int
    word_offset: int

    def slot_word(self, tile: int) -> int:
        """Word offset of the slot that holds tile ``tile`` (its epoch word; counters follow)."""
        return self.word_offset + (tile % self.slots) * WORDS_PER_SLOT


@dataclass(frozen=True)
class Window:
    """A named window answered from ``tiles`` consecutive tiles of ring number ``ring``."""

    name: str
    window_ms: int
    tile_ms: int
    ring: int
    tiles: int

    def tile_range(self, at_ms: int) -> range:
        """Tiles of this window at time ``at_ms``: the ``tiles`` tiles ending at ``ceil(at / tile)``.

        At a tile-aligned ``at`` this is exactly ``[at - window, at)``; otherwise the window ends at the
        next tile boundary (it keeps the freshest events and starts at most one tile late).

        >>> w = Window("1h", 3_600_000, 300_000, 0, 12)
        >>> w.tile_range(3_600_000), w.tile_range(3_600_001)
        (range(0, 12), range(1, 13))
        """
        end = -(-at_ms // self.tile_ms)
        return range(end - self.tiles, end)

    def bounds(self, at_ms: int) -> tuple[int, int]:
        """``[start, end)`` in epoch ms of the events this window counts at ``at_ms``.

        >>> Window("1d", 86_400_000, 3_600_000, 1, 24).bounds(90_000_001)
        (7200000, 93600000)
        """
        tiles = self.tile_range(at_ms)
        return tiles.start * self.tile_ms, tiles.stop * self.tile_ms


@dataclass(frozen=True)
class TileLayout:
    """Where every ring lives in an entity's blob, and which ring answers which window."""

    rings: tuple[Ring, ...]
    windows: tuple[Window, ...]
    words: int
    fingerprint: int

    @property
    def nbytes(self) -> int:
        """Size of one entity's blob in bytes."""
        return self.words * 4

    @classmethod
    def from_settings(cls, stats: StatsSettings) -> TileLayout:
        """The layout of ``settings.stats`` (windows and allowed lateness)."""
        return cls.build(stats.windows, stats.allowed_lateness_ms)

    @classmethod
    def build(cls, windows: Mapping[str, str], allowed_lateness_ms: int) -> TileLayout:
        """Rings of ``R = max window / tile + 1 + ceil(lateness / tile)`` slots per distinct tile size.

        >>> lay = TileLayout.build({"1h": "5m", "1d": "1h", "7d": "1d", "30d": "1d"}, 3_600_000)
        >>> [(r.tile_ms // 60_000, r.slots) for r in lay.rings], lay.nbytes
        ([(5, 25), (60, 26), (1440, 32)], 2328)
        >>> TileLayout.build({"1h": "7m"}, 0)
        Traceback (most recent call last):
        ...
        infra.errors.ConfigError: window 1h is not a multiple of its tile size 7m
        """
        if not windows:
            msg = "stats.windows is empty"
            raise ConfigError(msg)
        spans: dict[int, int] = {}
        parsed: list[tuple[str, int, int]] = []
        for name, tile_text in windows.items():
            window_ms, tile_ms = parse_duration(name), parse_duration(tile_text)
            if window_ms % tile_ms:
                msg = f"window {name} is not a multiple of its tile size {tile_text}"
                raise ConfigError(msg)
            if MAX_TS_MS // tile_ms + 1 >= U32_MAX:
                msg = f"tile size {tile_text} is too small (tile indexes must fit in u32)"
                raise ConfigError(msg)
            spans[tile_ms] = max(spans.get(tile_ms, 0), window_ms // tile_ms)
            parsed.append((name, window_ms, tile_ms))
        rings: list[Ring] = []
        offset = HEADER_WORDS
        for tile_ms in sorted(spans):
            slots = spans[tile_ms] + 1 + math.ceil(allowed_lateness_ms / tile_ms)
            rings.append(Ring(tile_ms, slots, offset))
            offset += slots * WORDS_PER_SLOT
        position = {r.tile_ms: i for i, r in enumerate(rings)}
        wins = tuple(Window(n, w, t, position[t], w // t) for n, w, t in parsed)
        shape = ";".join(f"{r.tile_ms}x{r.slots}" for r in rings) + f";{len(COUNTERS)}"
        fingerprint = (zlib.crc32(shape.encode()) | 1) & U32_MAX
        return cls(tuple(rings), wins, offset, fingerprint)

    def window(self, name: str) -> Window:
        """The window called ``name`` (raises ``KeyError`` listing the known ones)."""
        for w in self.windows:
            if w.name == name:
                return w
        msg = f"unknown window {name!r}; known: {[w.name for w in self.windows]}"
        raise KeyError(msg)

    def lua_args(self) -> list[object]:
        """``[fingerprint, nbytes, [[tile_ms, slots, word_offset], …]]`` for the scripts (msgpack)."""
        return [self.fingerprint, self.nbytes, [[r.tile_ms, r.slots, r.word_offset] for r in self.rings]]


def aggregate_cells(
    layout: TileLayout, entity: npt.NDArray[np.int64], ts: npt.NDArray[np.int64], counter: npt.NDArray[np.int64]
) -> dict[int, tuple[list[int], bytes]]:
    """A batch's tile increments per entity, pre-aggregated as the Lua ``tile_apply`` takes them (pure).

    Event ``i`` (``ts[i]``, counter index ``counter[i]``) counts for entity number ``entity[i]``. Per
    entity there is one cell per (ring, slot): the newest tile of the batch in that slot and its counters
    — an event of an older tile of the same slot is dropped, as the newer tile resets the slot anyway
    (the rule of :func:`apply_events`). Each entity gets ``(cells, images)``: ``cells`` is ``ring
    (1-based), slot, tile, counter_0 … counter_5`` per cell, ``images`` the cells' slot words as the blob
    stores them (``epoch = tile + 1`` and the six counters, big-endian ``u32``, 28 bytes per cell): what a
    slot that starts a new tile is set to in one ``SETRANGE``. Vectorised over the whole batch.

    >>> lay = TileLayout.build({"1h": "1h"}, 0)          # one ring of 2 one-hour slots
    >>> h = 3_600_000
    >>> got = aggregate_cells(lay, np.array([0, 0, 0, 1]), np.array([10 * h, 10 * h + 5, 8 * h, 9 * h]),
    ...                       np.array([0, 1, 0, 2]))
    >>> got[0][0], got[1][0], got[0][1][:8]
    ([1, 0, 10, 1, 1, 0, 0, 0, 0], [1, 1, 9, 0, 0, 1, 0, 0, 0], b'\\x00\\x00\\x00\\x0b\\x00\\x00\\x00\\x01')
    """
    if len(entity) == 0:
        return {}
    n_rings = len(layout.rings)
    tile_ms = np.array([r.tile_ms for r in layout.rings], dtype=np.int64)
    slots = np.array([r.slots for r in layout.rings], dtype=np.int64)
    span = int(slots.max())
    tiles = (ts[:, None] // tile_ms[None, :]).ravel()
    slot = (tiles.reshape(-1, n_rings) % slots[None, :]).ravel()
    ring = np.tile(np.arange(n_rings, dtype=np.int64), len(entity))
    key = (np.repeat(entity, n_rings) * n_rings + ring) * span + slot
    order = np.lexsort((tiles, key))
    key, tiles, counts_of = key[order], tiles[order], np.repeat(counter, n_rings)[order]
    starts = np.r_[True, key[1:] != key[:-1]]
    group = np.cumsum(starts) - 1
    last = np.r_[starts[1:], True]
    newest = tiles[last][group]
    keep = tiles == newest
    counts = np.zeros((int(group[-1]) + 1, len(COUNTERS)), dtype=np.int64)
    np.add.at(counts, (group[keep], counts_of[keep]), 1)
    gkey = key[last]
    rows = np.column_stack((gkey // span % n_rings + 1, gkey % span, tiles[last], counts))
    images = np.column_stack((tiles[last] + 1, np.minimum(counts, U32_MAX))).astype(">u4").tobytes()
    owner = gkey // (span * n_rings)
    bounds = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1], True])
    size, width = 4 * WORDS_PER_SLOT, rows.shape[1]
    flat, owners = rows.ravel().tolist(), owner[bounds[:-1]].tolist()  # one conversion, sliced per entity
    return {who: (flat[a * width : b * width], images[a * size : b * size])
            for who, (a, b) in zip(owners, itertools.pairwise(bounds.tolist()), strict=True)}


def empty_words(layout: TileLayout) -> npt.NDArray[np.uint32]:
    """A zeroed blob as native ``uint32`` words (the state of an entity never written)."""
    return np.zeros(layout.words, dtype=np.uint32)


def apply_events(
    words: npt.NDArray[np.uint32], layout: TileLayout, events: Iterable[tuple[int, int]]
) -> None:
    """Pure model of the Lua tile update: add ``(ts_ms, counter_index)`` events to ``words`` in place.

    A slot holding an older tile is reset to the new tile; an event whose slot already holds a *newer*
    tile is beyond the ring's retention and is dropped; counters saturate at ``2**32 - 1``. The final
    state does not depend on the order of the events.

    >>> lay = TileLayout.build({"1h": "1h"}, 0)          # one ring of 2 one-hour slots
    >>> w = empty_words(lay)
    >>> apply_events(w, lay, [(10 * 3_600_000, 0), (8 * 3_600_000, 0)])   # tile 8 shares tile 10's slot
    >>> w[1:8].tolist()                                   # slot 0: epoch 11, one impression
    [11, 1, 0, 0, 0, 0, 0]
    """
    if words[0] != layout.fingerprint:
        words[:] = 0
        words[0] = layout.fingerprint
    for ts, counter in events:
        for ring in layout.rings:
            tile = ts // ring.tile_ms
            at = ring.slot_word(tile)
            epoch = int(words[at])
            if epoch > tile + 1:
                continue
            if epoch < tile + 1:
                words[at : at + WORDS_PER_SLOT] = 0
                words[at] = tile + 1
            cell = at + 1 + counter
            words[cell] = min(int(words[cell]) + 1, U32_MAX)


def encode_words(words: npt.NDArray[np.uint32]) -> bytes:
    """Native words to the blob bytes Redis stores (big-endian, as ``BITFIELD u32`` writes them)."""
    return words.astype(">u4").tobytes()


def decode_blobs(blobs: Sequence[bytes | None], layout: TileLayout) -> npt.NDArray[np.uint32]:
    """Stack blobs (``None`` = missing key) into one ``(n, words)`` big-endian array (one copy).

    Rows are not validated here: :func:`window_counts` reads a row whose header is not this layout's
    fingerprint (a missing key, or a blob written under other settings) as all zeros.

    >>> lay = TileLayout.build({"1h": "1h"}, 0)
    >>> decode_blobs([None, b"junk"], lay).shape
    (2, 15)
    """
    size = layout.nbytes
    zero = bytes(size)
    parts = [
        zero if b is None else b if len(b) == size else (bytes(b[:size]) + zero)[:size] for b in blobs
    ]
    return np.frombuffer(b"".join(parts), dtype=">u4").reshape(len(parts), layout.words)


def window_counts(
    arr: npt.NDArray[np.uint32], layout: TileLayout, at_ms: int, windows: Sequence[str]
) -> npt.NDArray[np.int64]:
    """Counts ``(n, len(windows), len(COUNTERS))`` at time ``at_ms`` from :func:`decode_blobs` rows.

    One compiled loop (numba) over entities, windows and each window's tiles: a slot counts when its
    epoch is the expected tile + 1 and the row's header is this layout's fingerprint. Never negative;
    empty, stale and foreign slots count 0. (The numpy version, with masks and a batched ``matmul``,
    took 0.63 ms for 1,000 entities x 4 windows; the loop ≈ 0.1 ms.)

    >>> lay = TileLayout.build({"2h": "1h"}, 0)
    >>> w = empty_words(lay); apply_events(w, lay, [(3_600_000, 2), (7_199_999, 2), (7_200_000, 2)])
    >>> arr = decode_blobs([encode_words(w)], lay)
    >>> [int(window_counts(arr, lay, t, ["2h"])[0, 0, 2]) for t in (3_600_000, 7_200_000, 10_800_000)]
    [0, 2, 3]
    """
    plan = np.empty((len(windows), 4), dtype=np.int64)  # per window: word offset, slots, first tile, tiles
    for wi, name in enumerate(windows):
        win = layout.window(name)
        ring = layout.rings[win.ring]
        plan[wi] = (ring.word_offset, ring.slots, win.tile_range(at_ms).start, win.tiles)
    # a view, no copy: the kernel byte-swaps the big-endian words it reads
    native = np.ascontiguousarray(arr).view(np.uint32)
    return _window_kernel(native, layout.fingerprint, plan, len(COUNTERS))


@njit(inline="always")
def _be32(x: np.uint32) -> np.int64:  # pragma: no cover - compiled
    """The big-endian u32 ``x`` (read as a little-endian word) as an integer."""
    v = np.int64(x)
    return ((v >> 24) & 0xFF) | ((v >> 8) & 0xFF00) | ((v << 8) & 0xFF0000) | ((v << 24) & 0xFF000000)


@njit(cache=True, nogil=True)
def _window_kernel(  # pragma: no cover - compiled
    words: npt.NDArray[np.uint32], fingerprint: int, plan: npt.NDArray[np.int64], counters: int
) -> npt.NDArray[np.int64]:
    """Sum, per row and window, the counters of the slots whose epoch is the expected tile + 1."""
    n = words.shape[0]
    out = np.zeros((n, plan.shape[0], counters), dtype=np.int64)
    for i in range(n):
        if _be32(words[i, 0]) != fingerprint:
            continue  # missing key or a blob of other settings: zeros
        for wi in range(plan.shape[0]):
            offset, slots, first, tiles = plan[wi, 0], plan[wi, 1], plan[wi, 2], plan[wi, 3]
            slot = first % slots  # one division per window; then step through the ring
            for tile in range(first, first + tiles):
                base = offset + slot * (counters + 1)
                if _be32(words[i, base]) == tile + 1:
                    for c in range(counters):
                        out[i, wi, c] += _be32(words[i, base + 1 + c])
                slot += 1
                if slot == slots:
                    slot = 0
    return out
