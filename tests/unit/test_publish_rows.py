"""The publish's HSET commands: every row lands in its id's shard hash, as its float32 bytes, whether the
rows come grouped by shard (the trainer's) or in any order (read back from the packed bytes, as Redis
parses them)."""

from __future__ import annotations

import hiredis
import numpy as np

from infra.keys import shard_of
from online_learning.publish import Family

SHARDS = 8


def _written(family: Family, chunk: int) -> dict[tuple[str, str], bytes]:
    out: dict[tuple[str, str], bytes] = {}
    reader = hiredis.Reader(encoding="latin-1")  # every byte survives as one character
    for rows in family.hsets(SHARDS, lambda s: f"h{s}", chunk=chunk):
        reader.feed(rows.packed())
        command = reader.gets()
        assert command[0] == "HSET" and len(command) % 2 == 0 and len(command) <= 2 + 2 * chunk
        for field, value in zip(command[2::2], command[3::2], strict=True):
            out[(command[1], field)] = value.encode("latin-1")
    return out


def _reference(ids: list[str], matrix: np.ndarray) -> dict[tuple[str, str], bytes]:
    return {(f"h{shard_of(i, SHARDS)}", i): matrix[k].astype("<f4").tobytes() for k, i in enumerate(ids)}


def test_rows_in_any_order_and_rows_grouped_by_shard_write_the_same_fields() -> None:
    rng = np.random.default_rng(4)
    ids = [f"u{k}" for k in range(500)]
    matrix = rng.standard_normal((500, 6)).astype(np.float32)
    shard = np.array([shard_of(i, SHARDS) for i in ids])
    order = np.argsort(shard, kind="stable")
    grouped = Family([ids[k] for k in order], matrix[order], shard[order], SHARDS)
    for family in (Family(ids, matrix), Family(ids, matrix, shard, SHARDS), grouped):
        for chunk in (7, 20_000):
            assert _written(family, chunk) == _reference(ids, matrix)


def test_no_rows_write_nothing_and_one_row_writes_one_field() -> None:
    assert list(Family().hsets(SHARDS, str)) == []
    one = np.ones((1, 3), np.float32)
    assert _written(Family(["i9"], one), 5) == _reference(["i9"], one)
