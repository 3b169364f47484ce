"""RowsHset packs what a client would send: parsed back by hiredis, the packed bytes are the same HSET
(same key, the same field -> value map applied in order), for ids of any length and encoding."""

from __future__ import annotations

import hiredis
import numpy as np
import pytest

from infra.resp import RowsHset


def _parsed(packed: bytes) -> list[bytes]:
    reader = hiredis.Reader()
    reader.feed(packed)
    command = reader.gets()
    assert reader.gets() is False  # exactly one command, nothing left over
    return list(command)


def _applied(pairs: list[bytes]) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    for field, value in zip(pairs[0::2], pairs[1::2], strict=True):
        out[field] = value  # HSET: a repeated field ends with its last value
    return out


@pytest.mark.parametrize("ids", [
    ["u1", "u22", "u333", "u4", "item-99999"],
    ["é", "ü1", "用户", "a"],        # multi-byte ids: lengths are bytes, not characters
    ["", "x", ""],                   # empty ids
    ["a\x00", "b", "a\x00\x00"],     # trailing NUL bytes survive
    ["dup", "other", "dup"],         # a repeated id keeps its last row
    ["only"],
])
@pytest.mark.parametrize("dtype", ["<f4", "<f8"])
def test_packed_is_the_same_hset_as_the_arguments(ids: list[str], dtype: str) -> None:
    matrix = np.random.default_rng(len(ids)).standard_normal((len(ids), 3)).astype(dtype)
    command = RowsHset("rs2:{0}:emb", ids, matrix)
    parsed, args = _parsed(command.packed()), command.args()
    assert parsed[:2] == [b"HSET", b"rs2:{0}:emb"] and len(parsed) == len(args)
    expected = {i.encode(): matrix[k].tobytes() for k, i in enumerate(ids)}
    assert _applied(parsed[2:]) == expected == _applied([a.encode() if isinstance(a, str) else a for a in args[2:]])


def test_rows_of_a_sliced_or_strided_matrix_are_its_rows() -> None:
    matrix = np.arange(40, dtype="<f4").reshape(10, 4)[::2, 1:3]  # not contiguous
    parsed = _parsed(RowsHset("k", [str(k) for k in range(5)], matrix).packed())
    assert _applied(parsed[2:]) == {str(k).encode(): matrix[k].tobytes() for k in range(5)}
