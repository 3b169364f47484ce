"""The batch plan behind the writers (pure, no Redis): chunks of a batch, the KEYS and msgpack rows of one
shard call being built, and the tile events of a whole batch for one vectorised aggregation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from filters.tiles import TileLayout, aggregate_cells
from infra.lua import Call
from stream.deliveries import Delivery

__all__ = ["Batch", "Prepared", "ShardCall", "TileEvents", "split_batch", "with_cells"]

Batch = Mapping[int, Sequence[Delivery]]
"""Source partition -> its deliveries in source-position order."""


def split_batch(batch: Batch, max_events: int) -> list[dict[int, list[Delivery]]]:
    """``batch`` cut into consecutive chunks of at most ``max_events`` deliveries; every partition's
    deliveries stay in order across the chunks (applying the chunks in order = applying the batch).

    >>> from filters.events import Event
    >>> d = [Delivery(k, Event(event_id=f"e{k}", type="click", user_id="u", item_id="i", ts=1)) for k in range(5)]
    >>> [{p: [x.offset for x in ds] for p, ds in c.items()} for c in split_batch({0: d[:3], 1: d[3:]}, 2)]
    [{0: [0, 1]}, {0: [2], 1: [3]}, {1: [4]}]
    """
    chunks: list[dict[int, list[Delivery]]] = [{}]
    room = max_events
    for p, deliveries in batch.items():
        at = 0
        while at < len(deliveries):
            if room == 0:
                chunks.append({})
                room = max_events
            take = list(deliveries[at : at + room])
            chunks[-1][p] = take
            at += len(take)
            room -= len(take)
    return [c for c in chunks if c]


class TileEvents:
    """Tile events of a whole batch, numbered by blob, for one vectorised :func:`aggregate_cells`."""

    def __init__(self) -> None:
        self.blobs = 0
        self.entity: list[int] = []
        self.ts: list[int] = []
        self.counter: list[int] = []

    def new_blob(self) -> int:
        self.blobs += 1
        return self.blobs - 1

    def add(self, blob: int, ts: int, counter: int) -> None:
        self.entity.append(blob)
        self.ts.append(ts)
        self.counter.append(counter)

    def cells(self, layout: TileLayout) -> dict[int, tuple[list[int], bytes]]:
        arrays = (np.array(a, dtype=np.int64) for a in (self.entity, self.ts, self.counter))
        return aggregate_cells(layout, *arrays)


@dataclass
class ShardCall:
    """The KEYS and body rows of one shard call being built, and which deliveries it carries."""

    keys: list[str]
    rows: dict[str, list[list[Any]]] = field(
        default_factory=lambda: {"parts": [], "users": [], "cats": [], "blobs": []})
    numbers: dict[str, int] = field(default_factory=dict)  # "p:<partition>" / "u:<user>" / key -> row no
    events: list[Any] = field(default_factory=list)  # user: the event rows; entity: (partition, delivery, row no)
    refs: list[tuple[int, int]] = field(default_factory=list)  # (partition, position in its list)
    late: int = 0  # entity: how many of its events are late for the statistics
    slots: dict[str, int] = field(default_factory=dict)  # key -> KEYS index (1-based)
    kind: str = "user"

    def slot(self, key: str) -> int:
        index = self.slots.get(key)
        if index is None:
            self.keys.append(key)
            index = self.slots[key] = len(self.keys)
        return index

    def add_row(self, table: str, name: str, row: list[Any]) -> int:
        self.rows[table].append(row)
        number = self.numbers[name] = len(self.rows[table])
        return number


@dataclass
class Prepared:
    """A batch planned and encoded for one pipeline: what :meth:`send` runs and :meth:`finish` reads."""

    batch: Batch
    calls: list[ShardCall]
    script_calls: list[Call]
    kinds: dict[str, int] = field(default_factory=dict)  # entity writer: kind -> deliveries without one


def with_cells(
    rows: list[list[Any]], cells: dict[int, tuple[list[int], bytes]], images: bytearray
) -> list[list[Any]]:
    """Rows whose last field is a tile blob number, with that number replaced by the blob's cells and the
    1-based offset of their slot images in ``images`` (appended to it: the call's third argument)."""
    out = []
    for row in rows:
        flat, image = cells.get(row[-1], ([], b""))
        out.append([*row[:-1], flat, len(images) + 1])
        images += image
    return out
