"""Pure Bloom filter layer: sizing, hash scheme, Redis bit order, vectorised and union membership."""

from __future__ import annotations

import math
import random

import mmh3
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from filters.bloom import (
    HASH_SEEDS,
    MAX_BITS_EXACT,
    BloomFilter,
    BloomParams,
    false_positive_rate,
    fpr_from_fill,
    item_hashes,
    merge,
    optimal_bits,
    optimal_hashes,
    positions,
    seed_bits,
    seed_hashes,
)
from filters.slices import SlicePlan
from filters.union import union_contains
from infra.errors import IncompatibleFilterError, InputError

HASHES_EMPTY = [3677479568, 3230441427, 795342133]
HASHES_A = [1359256580, 3996033895, 1718604542]
HASHES_ITEM1 = [2378105599, 1293267355, 3865332415]
HASHES_U = [757943359, 2567070939, 1986057499]


# --- sizing -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("n", "fpr", "m", "k"),
    [
        (20_000, 0.01, 191_702, 7),  # measured_anchors.md
        (200, 0.01, 1918, 7),
        (10_000, 0.01, 95_851, 7),
        (1, 0.01, 10, 7),
        (1000, 0.001, 14_378, 10),
        (1000, 0.1, 4793, 3),
        (1, 0.49, 2, 1),
    ],
)
def test_optimal_sizing(n: int, fpr: float, m: int, k: int) -> None:
    assert optimal_bits(n, fpr) == m
    assert optimal_hashes(m, n) == k
    assert m == math.ceil(-n * math.log(fpr) / math.log(2) ** 2)


@pytest.mark.parametrize(
    ("fpr", "k_seed", "seed_bits_per_item", "actual_fpr"),
    [(0.10, 3, 4.61, 0.110), (0.05, 4, 5.99, 0.056), (0.01, 7, 9.21, 0.0121), (0.001, 10, 13.82, 0.0013)],
)
def test_seed_approximations_cost(
    fpr: float, k_seed: int, seed_bits_per_item: float, actual_fpr: float
) -> None:
    """The seeds' m = 2n·ln(1/δ), k = 1.44·ln(1/δ) undershoot m by ~4 % and overshoot δ (table in docs)."""
    n = 100_000
    assert seed_hashes(fpr) == k_seed
    assert seed_bits(n, fpr) / n == pytest.approx(seed_bits_per_item, abs=0.01)
    assert seed_bits(n, fpr) < optimal_bits(n, fpr)
    assert false_positive_rate(seed_bits(n, fpr), n, k_seed) == pytest.approx(actual_fpr, rel=0.05)
    assert false_positive_rate(optimal_bits(n, fpr), n, optimal_hashes(optimal_bits(n, fpr), n)) <= fpr * 1.01


@pytest.mark.parametrize(("n", "fpr"), [(0, 0.01), (-1, 0.01), (10, 0.0), (10, 1.0), (10, -0.1)])
def test_sizing_rejects_bad_input(n: int, fpr: float) -> None:
    with pytest.raises(InputError):
        optimal_bits(n, fpr)


@pytest.mark.parametrize(("m", "n"), [(0, 1), (1, 0)])
def test_hashes_rejects_bad_input(m: int, n: int) -> None:
    with pytest.raises(InputError):
        optimal_hashes(m, n)


@pytest.mark.parametrize(
    ("fill", "k", "fpr"), [(0.0, 7, 0.0), (1.0, 3, 1.0), (0.5, 1, 0.5), (0.5, 10, 2**-10)]
)
def test_fpr_from_fill(fill: float, k: int, fpr: float) -> None:
    assert fpr_from_fill(fill, k) == pytest.approx(fpr)


def test_false_positive_rate_of_empty_filter() -> None:
    assert false_positive_rate(100, 0, 3) == 0.0


# --- hash scheme --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("item", "h"),
    [("", HASHES_EMPTY), ("a", HASHES_A), ("item-1", HASHES_ITEM1), ("ü", HASHES_U)],
)
def test_hash_scheme_v1_is_frozen(item: str, h: list[int]) -> None:
    """Golden values: changing them silently would misread every stored filter (bump the version)."""
    assert item_hashes([item], 1)[:, 0].tolist() == h


def test_hash_scheme_v1_is_murmur3_x64_128_of_utf8() -> None:
    digest = mmh3.hash_bytes("héllo".encode(), HASH_SEEDS[1])
    h1, h2, h3 = item_hashes(["héllo"])[:, 0].tolist()
    assert h1 == int.from_bytes(digest[0:4], "little")
    assert h2 == int.from_bytes(digest[8:12], "little") | 1
    assert h3 == int.from_bytes(digest[4:8], "little")


def test_unknown_hash_version() -> None:
    with pytest.raises(IncompatibleFilterError):
        item_hashes(["a"], 99)
    with pytest.raises(IncompatibleFilterError):
        BloomParams(10, 1, hash_version=99)


def test_hashes_do_not_depend_on_batch() -> None:
    items = [f"i{j}" for j in range(100)]
    h = item_hashes(items)
    for j in (0, 17, 99):
        assert item_hashes([items[j]])[:, 0].tolist() == h[:, j].tolist()


@pytest.mark.parametrize("m", [1, 2, 7, 8, 9, 3366, 191_702, MAX_BITS_EXACT, MAX_BITS_EXACT + 1, 2**31 + 3])
def test_positions_match_the_lua_formula(m: int) -> None:
    """numpy positions == floor(((h1 + j*h2 + j(j-1)/2*h3) mod 2^32) * m / 2^32) with Python ints."""
    rng = random.Random(m)
    rows = [[rng.randrange(2**32) for _ in range(200)] + [0, 2**32 - 1] for _ in range(3)]
    h = np.array(rows, dtype=np.uint32)
    k = 40
    got = positions(h, m, k)
    assert got.shape == (k, h.shape[1])
    for i in range(h.shape[1]):
        h1, h2, h3 = (int(x) for x in h[:, i])
        for j in range(k):
            assert got[j, i] == (((h1 + j * h2 + j * (j - 1) // 2 * h3) % 2**32) * m) >> 32
    assert got.min() >= 0 and got.max() < m


def test_lua_intermediates_are_exact_in_doubles() -> None:
    """Largest value Lua forms before the modulo, and x*m after it, stay below 2^53."""
    k_max = max(p.k for p in SlicePlan(0.01, 86_400_000, 30 * 86_400_000, 200).table)
    top = 2**32 - 1
    assert top + (k_max - 1) * top + (k_max - 1) * (k_max - 2) // 2 * top < 2**53
    assert top * MAX_BITS_EXACT < 2**53


def test_triple_hashing_meets_the_design_fpr() -> None:
    """Small many-probe filters (the slice shape): measured FPR within 10 % of the formula."""
    m, k, n = 3367, 12, 200
    members = [[f"s{g}-{j}" for j in range(n)] for g in range(31)]
    probes = item_hashes([f"p{j}" for j in range(200_000)])
    rates = []
    for items in members:
        f = BloomFilter(BloomParams(m, k))
        f.add_many(items)
        rates.append(union_contains([f.to_bytes()], m, k, probes).mean())
    assert float(np.mean(rates)) <= 1.1 * false_positive_rate(m, n, k)


# --- filter -------------------------------------------------------------------------------------------
def test_redis_bit_order() -> None:
    """Bit offset 0 is the most significant bit of byte 0 (SETBIT/GETRANGE semantics)."""
    f = BloomFilter(BloomParams(m=16, k=1))
    f.bits[0] = 1
    f.bits[9] = 1
    assert f.to_bytes() == bytes([0x80, 0x40])
    g = BloomFilter.from_bytes(BloomParams(m=16, k=1), b"\x80")  # shorter string = zero-extended
    assert g.bits[0] and g.bits.count(1) == 1


@given(st.lists(st.text(max_size=30), min_size=1, max_size=200))
@settings(max_examples=50, deadline=None)
def test_no_false_negatives(items: list[str]) -> None:
    f = BloomFilter.for_capacity(max(1, len(items)), 0.01)
    f.add_many(items)
    assert f.contains_many(items).all()
    assert all(x in f for x in items)


def test_add_counts_only_new_items() -> None:
    f = BloomFilter.for_capacity(100, 0.001)
    assert f.add_many(["a", "b", "a"]) == 2
    assert f.add_many(["a", "b"]) == 0
    assert f.add("c") is True and f.add("c") is False


def test_measured_fpr_matches_design() -> None:
    n, fpr = 20_000, 0.01
    f = BloomFilter.for_capacity(n, fpr)
    f.add_many([f"member-{j}" for j in range(n)])
    probes = [f"other-{j}" for j in range(200_000)]
    measured = float(f.contains_many(probes).mean())
    assert 0.8 * fpr < measured < 1.1 * fpr
    assert f.estimated_fpr() == pytest.approx(fpr, rel=0.15)


@pytest.mark.parametrize("bad", [["a", 1], ["a", b"b"], ["a", None], "abc", b"abc", ["ok", "\udc80"]])
def test_item_hashes_rejects_non_strings(bad: object) -> None:
    with pytest.raises(InputError):
        item_hashes(bad)  # type: ignore[arg-type]


def test_contains_non_string_is_false() -> None:
    assert 3 not in BloomFilter.for_capacity(10, 0.1)


@pytest.mark.parametrize(
    "other",
    [BloomParams(2000, 7), BloomParams(1918, 6)],
    ids=["different-m", "different-k"],
)
def test_merge_refuses_different_parameters(other: BloomParams) -> None:
    a = BloomFilter(BloomParams(1918, 7))
    with pytest.raises(IncompatibleFilterError):
        a | BloomFilter(other)
    with pytest.raises(IncompatibleFilterError):
        a |= BloomFilter(other)
    with pytest.raises(IncompatibleFilterError):
        merge([a, BloomFilter(other)])


def test_merge_refuses_different_hash_scheme(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(HASH_SEEDS, 2, 12345)
    with pytest.raises(IncompatibleFilterError):
        BloomFilter(BloomParams(100, 3, 1)) | BloomFilter(BloomParams(100, 3, 2))


def test_merge_is_union() -> None:
    a, b = BloomFilter.for_capacity(100, 0.01), BloomFilter.for_capacity(100, 0.01)
    a.add_many(["x", "y"])
    b.add_many(["z"])
    u = merge([a, b])
    assert u.contains_many(["x", "y", "z"]).all()
    assert u == (a | b)
    with pytest.raises(InputError):
        merge([])


def test_dumps_roundtrip_keeps_hash_version() -> None:
    f = BloomFilter.for_capacity(50, 0.02)
    f.add_many(["a", "b"])
    g = BloomFilter.loads(f.dumps())
    assert g == f and g.params.hash_version == 1
    with pytest.raises(IncompatibleFilterError):
        BloomFilter.loads(b"nope" + bytes(20))
    with pytest.raises(IncompatibleFilterError):
        BloomFilter.from_bytes(BloomParams(8, 1), b"\0\0")


def test_bitarray_shape_is_checked() -> None:
    from bitarray import bitarray

    with pytest.raises(InputError):
        BloomFilter(BloomParams(16, 1), bitarray(8, endian="big"))
    with pytest.raises(InputError):
        BloomParams(0, 1)


# --- union membership over many filters ---------------------------------------------------------------
@pytest.mark.parametrize("n_filters", [1, 7, 8, 9, 16, 17, 31, 32, 33, 64, 65, 130])
@pytest.mark.parametrize("m", [8, 13, 3366])
def test_union_contains_equals_any_of_the_filters(n_filters: int, m: int) -> None:
    rng = random.Random(n_filters * 1000 + m)
    params = BloomParams(m, 4)
    filters = []
    for g in range(n_filters):
        f = BloomFilter(params)
        f.add_many([f"f{g}-{j}" for j in range(rng.randrange(0, max(2, m // 40)))])
        filters.append(f)
    probes = [f"f{rng.randrange(n_filters)}-{j}" for j in range(300)] + [f"x{j}" for j in range(300)]
    expected = np.zeros(len(probes), dtype=bool)
    for f in filters:
        expected |= f.contains_many(probes)
    got = union_contains([f.to_bytes() for f in filters], m, 4, item_hashes(probes))
    assert got.tolist() == expected.tolist()


def test_union_contains_matches_positions_beyond_exact_double_range() -> None:
    m, k = MAX_BITS_EXACT + 13, 30  # the uint64 branch of positions(), many probes
    filters = [BloomFilter(BloomParams(m, k)) for _ in range(3)]
    for g, f in enumerate(filters):
        f.add_many([f"big{g}-{j}" for j in range(500)])
    probes = [f"big{j % 3}-{j}" for j in range(600)] + [f"no-{j}" for j in range(2000)]
    expected = filters[0].contains_many(probes) | filters[1].contains_many(probes) | filters[2].contains_many(probes)
    got = union_contains([f.to_bytes() for f in filters], m, k, item_hashes(probes))
    assert got.tolist() == expected.tolist()
    assert got[:600].sum() > 150  # members of each filter are found (the comparison is not vacuous)


def test_union_contains_rejects_huge_m() -> None:
    with pytest.raises(InputError):
        union_contains([b"\x00"], 1 << 32, 3, item_hashes(["a"]))


def test_union_contains_pads_short_bitmaps() -> None:
    f = BloomFilter(BloomParams(3366, 12))
    f.add_many(["a", "b"])
    data = f.to_bytes().rstrip(b"\0")
    assert union_contains([data, b""], 3366, 12, item_hashes(["a", "b", "c"])).tolist() == [True, True, False]


def test_union_contains_empty_inputs() -> None:
    assert union_contains([], 10, 1, item_hashes(["a"])).tolist() == [False]
    assert union_contains([b"\xff"], 8, 1, item_hashes([])).tolist() == []
