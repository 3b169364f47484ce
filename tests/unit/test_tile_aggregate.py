"""The vectorised tile pre-aggregation equals a per-event brute force, and applied it equals the pure model."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from filters.tiles import TileLayout, aggregate_cells, apply_events, empty_words

LAYOUT = TileLayout.build({"1h": "5m", "1d": "1h", "7d": "1d", "30d": "1d"}, 3_600_000)
H = 3_600_000


def brute(layout: TileLayout, events: list[tuple[int, int, int]]) -> dict[int, list[int]]:
    """One dict cell per (entity, ring, slot): newest tile wins the slot, its counters are summed."""
    cells: dict[int, dict[tuple[int, int], list[int]]] = {}
    for entity, ts, counter in events:
        for r, ring in enumerate(layout.rings):
            tile = ts // ring.tile_ms
            own = cells.setdefault(entity, {})
            cell = own.get((r, tile % ring.slots))
            if cell is None or cell[0] < tile:
                cell = own[(r, tile % ring.slots)] = [tile, 0, 0, 0, 0, 0, 0]
            if cell[0] == tile:
                cell[1 + counter] += 1
    return {e: sorted([r + 1, s, *c] for (r, s), c in own.items()) for e, own in cells.items()}


def as_cells(flat: list[int]) -> list[list[int]]:
    return sorted(flat[i : i + 9] for i in range(0, len(flat), 9))


event = st.tuples(st.integers(0, 5), st.integers(1_700_000_000_000, 1_700_000_000_000 + 40 * 24 * H),
                  st.integers(0, 5))


@settings(max_examples=200, deadline=None)
@given(st.lists(event, max_size=60))
def test_vectorised_equals_brute_force(events: list[tuple[int, int, int]]) -> None:
    got = aggregate_cells(LAYOUT, *(np.array([e[k] for e in events], dtype=np.int64) for k in range(3)))
    assert {e: as_cells(c) for e, (c, _) in got.items()} == brute(LAYOUT, events)
    for cells, images in got.values():  # each image is the cell's epoch and counters, big-endian
        words = np.frombuffer(images, dtype=">u4").reshape(-1, 7)
        assert words.tolist() == [[cells[i + 2] + 1, *cells[i + 3 : i + 9]] for i in range(0, len(cells), 9)]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(1_700_000_000_000, 1_700_000_000_000 + 3 * 24 * H), st.integers(0, 5)),
                min_size=1, max_size=40))
def test_cells_applied_to_an_empty_blob_equal_the_pure_model(events: list[tuple[int, int]]) -> None:
    """What tile_apply does with the cells on a fresh blob (set epoch + counters) is apply_events."""
    flat = aggregate_cells(LAYOUT, np.zeros(len(events), dtype=np.int64),
                           *(np.array([e[k] for e in events], dtype=np.int64) for k in range(2)))[0][0]
    words = empty_words(LAYOUT)
    words[0] = LAYOUT.fingerprint
    for ring_no, slot, tile, *counts in as_cells(flat):
        at = LAYOUT.rings[ring_no - 1].word_offset + slot * 7
        words[at : at + 7] = [tile + 1, *counts]
    model = empty_words(LAYOUT)
    apply_events(model, LAYOUT, events)
    assert words.tolist() == model.tolist()
