"""Table and brute-force tests of the tile maths (filters/tiles.py)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from filters.tiles import (
    COUNTERS,
    U32_MAX,
    WORDS_PER_SLOT,
    TileLayout,
    apply_events,
    decode_blobs,
    empty_words,
    encode_words,
    parse_duration,
    tile_index,
    window_counts,
)
from infra.errors import ConfigError
from infra.settings import StatsSettings

M, H, D = 60_000, 3_600_000, 86_400_000
DEFAULT = TileLayout.from_settings(StatsSettings())
T0 = 1_700_006_400_000  # a UTC midnight (multiple of 1 day)


@pytest.mark.parametrize(
    ("text", "ms"),
    [("1ms", 1), ("30s", 30_000), ("5m", 5 * M), ("1h", H), ("1d", D), ("7d", 7 * D), (" 2w ", 14 * D)],
)
def test_parse_duration(text: str, ms: int) -> None:
    assert parse_duration(text) == ms


@pytest.mark.parametrize("text", ["", "5", "0m", "1y", "m5", "-1h", "1.5h"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("ts", "tile", "index"),
    [(0, 5 * M, 0), (5 * M - 1, 5 * M, 0), (5 * M, 5 * M, 1), (T0, D, T0 // D), (T0 - 1, D, T0 // D - 1)],
)
def test_tile_index(ts: int, tile: int, index: int) -> None:
    assert tile_index(ts, tile) == index


def test_default_layout() -> None:
    assert [(r.tile_ms, r.slots) for r in DEFAULT.rings] == [(5 * M, 25), (H, 26), (D, 32)]
    assert DEFAULT.nbytes == 4 * (1 + 7 * (25 + 26 + 32)) == 2328
    assert [(w.name, w.tiles, w.ring) for w in DEFAULT.windows] == [
        ("1h", 12, 0), ("1d", 24, 1), ("7d", 7, 2), ("30d", 30, 2)
    ]
    assert DEFAULT.fingerprint == TileLayout.from_settings(StatsSettings()).fingerprint
    other = TileLayout.build({"1h": "5m"}, 0)
    assert other.fingerprint != DEFAULT.fingerprint


@pytest.mark.parametrize(
    ("windows", "lateness"), [({}, 0), ({"1h": "7m"}, 0), ({"1h": "1ms"}, 0), ({"1h": "x"}, 0)]
)
def test_bad_layouts(windows: dict[str, str], lateness: int) -> None:
    with pytest.raises(ConfigError):
        TileLayout.build(windows, lateness)


@pytest.mark.parametrize(
    ("at", "bounds"),
    [
        (T0, (T0 - H, T0)),  # aligned: exactly [T - W, T)
        (T0 + 1, (T0 - H + 5 * M, T0 + 5 * M)),  # just after: ends at the next boundary
        (T0 - 1, (T0 - H, T0)),  # just before a boundary
        (T0 + 5 * M, (T0 - H + 5 * M, T0 + 5 * M)),
    ],
)
def test_window_bounds(at: int, bounds: tuple[int, int]) -> None:
    assert DEFAULT.window("1h").bounds(at) == bounds


def test_unknown_window() -> None:
    with pytest.raises(KeyError, match="known"):
        DEFAULT.window("2h")


def brute(events: list[tuple[int, int]], start: int, end: int) -> list[int]:
    counts = [0] * len(COUNTERS)
    for ts, c in events:
        if start <= ts < end:
            counts[c] += 1
    return counts


@pytest.mark.parametrize("seed", range(8))
def test_brute_force_at_every_aligned_time(seed: int) -> None:
    """Counts at tile-aligned T equal a brute-force count over [T - W, T) for every T the ring covers."""
    rng = random.Random(seed)
    lateness = H
    layout = TileLayout.build({"1h": "5m", "1d": "1h", "7d": "1d", "30d": "1d"}, lateness)
    now = T0 + rng.randrange(D)
    events = [(now - rng.randrange(40 * D) if rng.random() < 0.3 else now - rng.randrange(2 * H),
               rng.randrange(len(COUNTERS))) for _ in range(400)]
    newest = max(ts for ts, _ in events)
    # old events (up to 40 days) are applied too: whatever the ring drops lies outside every window below
    words = empty_words(layout)
    apply_events(words, layout, events)
    arr = decode_blobs([encode_words(words)], layout)
    for win in layout.windows:
        tile = win.tile_ms
        first = (newest - lateness) // tile  # exact for every aligned T >= first tile start
        for k in range(first, newest // tile + 3):
            at = k * tile
            got = window_counts(arr, layout, at, [win.name])[0, 0].tolist()
            assert got == brute(events, at - win.window_ms, at), (win.name, at)
            off = at + rng.randrange(1, tile)  # non-aligned: the documented rounding
            start, end = win.bounds(off)
            assert window_counts(arr, layout, off, [win.name])[0, 0].tolist() == brute(events, start, end)


def test_old_events_beyond_ring_never_leak() -> None:
    """An event whose slot holds a newer tile is dropped; an old slot never answers a new window."""
    layout = TileLayout.build({"2h": "1h"}, 0)  # 3 slots
    words = empty_words(layout)
    apply_events(words, layout, [(10 * H, 1)])
    apply_events(words, layout, [(7 * H, 1)])  # same slot as tile 10, older: dropped
    arr = decode_blobs([encode_words(words)], layout)
    assert window_counts(arr, layout, 11 * H, ["2h"])[0, 0, 1] == 1
    assert window_counts(arr, layout, 8 * H, ["2h"])[0, 0, 1] == 0  # slot holds tile 10, not 7
    assert window_counts(arr, layout, 14 * H, ["2h"])[0, 0, 1] == 0  # tile 13 would reuse the slot
    apply_events(words, layout, [(13 * H, 2)])  # reuse: reset, not added
    arr = decode_blobs([encode_words(words)], layout)
    assert window_counts(arr, layout, 14 * H, ["2h"])[0, 0].tolist() == [0, 0, 1, 0, 0, 0]


def test_order_independent() -> None:
    rng = random.Random(7)
    events = [(T0 + rng.randrange(-3 * D, D), rng.randrange(6)) for _ in range(300)]
    a, b = empty_words(DEFAULT), empty_words(DEFAULT)
    apply_events(a, DEFAULT, events)
    rng.shuffle(events)
    apply_events(b, DEFAULT, events)
    assert np.array_equal(a, b)


def test_saturates_instead_of_wrapping() -> None:
    layout = TileLayout.build({"1h": "1h"}, 0)
    words = empty_words(layout)
    apply_events(words, layout, [(H, 3)])
    at = layout.rings[0].slot_word(1)
    words[at + 1 + 3] = U32_MAX - 1
    apply_events(words, layout, [(H, 3), (H, 3), (H, 3)])
    assert words[at + 1 + 3] == U32_MAX
    arr = decode_blobs([encode_words(words)], layout)
    assert window_counts(arr, layout, 2 * H, ["1h"])[0, 0, 3] == U32_MAX


def test_never_below_zero_on_garbage() -> None:
    """Random words with a valid header (any epochs, any counters) never give negative counts."""
    rng = np.random.default_rng(3)
    words = rng.integers(0, 2**32, size=(50, DEFAULT.words), dtype=np.uint64).astype(np.uint32)
    words[:, 0] = DEFAULT.fingerprint
    arr = decode_blobs([encode_words(w) for w in words], DEFAULT)
    for at in (0, 1, T0, T0 + 1, 10**13 - 1):
        counts = window_counts(arr, DEFAULT, at, [w.name for w in DEFAULT.windows])
        assert (counts >= 0).all()


def test_missing_short_and_foreign_blobs_read_zero() -> None:
    words = empty_words(DEFAULT)
    apply_events(words, DEFAULT, [(T0 - 1, 0)])
    good = encode_words(words)
    foreign = TileLayout.build({"1h": "5m"}, 0)
    fw = empty_words(foreign)
    apply_events(fw, foreign, [(T0 - 1, 0)])
    blobs = [good, None, good[:100], encode_words(fw), good + b"\x00" * 8]
    counts = window_counts(decode_blobs(blobs, DEFAULT), DEFAULT, T0, ["1h"])
    assert counts[:, 0, 0].tolist() == [1, 0, 0, 0, 1]


def test_slot_words_are_disjoint() -> None:
    seen: set[int] = set()
    for ring in DEFAULT.rings:
        for tile in range(ring.slots):
            at = ring.slot_word(tile)
            cells = set(range(at, at + WORDS_PER_SLOT))
            assert not cells & seen
            seen |= cells
    assert seen == set(range(1, DEFAULT.words))

