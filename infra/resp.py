"""``HSET`` of fixed-width rows, packed into the Redis protocol (RESP) by numpy instead of per argument.

A publish of 100k embedding rows is one ``HSET`` field per row; hiredis packs ~0.75 µs per field (each
value a Python ``bytes``), which is most of the publish. :class:`RowsHset` writes the same bytes with
numpy: the rows are grouped by the byte length of their id, and within a group every field is a fixed-size
record (``$len\\r\\n id \\r\\n $width\\r\\n row \\r\\n``) filled column by column — ~0.2 µs per row.
Grouping keeps the ids' relative order within a length, so a repeated id (same length) still ends with
its last row, as a plain ``HSET`` would.

>>> import hiredis
>>> rows = RowsHset("h", ["a", "bc", "é"], np.arange(6, dtype="<f4").reshape(3, 2))
>>> rows.packed() == hiredis.pack_command(tuple(rows.args()))  # ids already in length order: same bytes
True
>>> RowsHset("h", ["bc", "a"], np.zeros((2, 1), "<f4")).packed().split(b"\\r\\n")[6::4]  # fields by id length
[b'a', b'bc']
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["RowsHset"]


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


@dataclass(frozen=True)
class RowsHset:
    """``HSET key ids[0] matrix[0] ids[1] matrix[1] …``, each value the row's raw bytes (``matrix``'s
    dtype, C order). Redis sees the same command either way; :meth:`args` is for clients that pack
    themselves (a cluster pipeline), :meth:`packed` for a raw connection."""

    key: str
    ids: Sequence[str]
    matrix: np.ndarray

    def _rows(self) -> np.ndarray:
        matrix = np.ascontiguousarray(self.matrix)
        return matrix.view(f"V{matrix.shape[1] * matrix.itemsize}").ravel()  # one void record per row

    def args(self) -> list[Any]:
        """The command as arguments: ``["HSET", key, id, row bytes, …]``."""
        fields: list[Any] = [None] * (2 * len(self.ids))
        fields[0::2], fields[1::2] = self.ids, self._rows().tolist()
        return ["HSET", self.key, *fields]

    def packed(self) -> bytes:
        """The command in RESP, byte for byte what a client would send (fields grouped by id length)."""
        rows = self._rows()
        width = rows.dtype.itemsize
        encoded = [field.encode() for field in self.ids]
        lengths = np.fromiter(map(len, encoded), np.int64, len(encoded))
        as_bytes = np.array(encoded, dtype=f"S{max(1, int(lengths.max(initial=0)))}")
        parts = [b"*%d\r\n$4\r\nHSET\r\n%s" % (2 + 2 * len(encoded), _bulk(self.key.encode()))]
        for length in np.unique(lengths).tolist():
            pick = np.flatnonzero(lengths == length)
            layout = [("head", f"S{len(b'$%d' % length) + 2}")] + ([("id", f"S{length}")] if length else [])
            layout += [("mid", f"S{len(b'$%d' % width) + 4}"), ("row", f"V{width}"), ("tail", "S2")]
            records = np.empty(len(pick), dtype=layout)
            records["head"] = b"$%d\r\n" % length
            if length:
                records["id"] = as_bytes[pick]
            records["mid"] = b"\r\n$%d\r\n" % width
            records["row"] = rows[pick]
            records["tail"] = b"\r\n"
            parts.append(records.tobytes())
        return b"".join(parts)
