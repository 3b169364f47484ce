"""The compiled MurmurHash3 batch hash equals mmh3 byte for byte, on both of its paths."""

from __future__ import annotations

import mmh3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from filters.murmur import hash128_many
from infra.errors import InputError


def reference(keys: list[str], seed: int) -> list[bytes]:
    return [mmh3.hash_bytes(k, seed) for k in keys]


def digests(keys: list[str], seed: int) -> list[bytes]:
    return [bytes(row) for row in hash128_many(keys, seed).view("u1")]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(st.characters(exclude_categories=["Cs"]), max_size=70), max_size=40),
       st.integers(0, 2**32 - 1))
def test_equals_mmh3_on_random_unicode(keys: list[str], seed: int) -> None:
    assert digests(keys, seed) == reference(keys, seed)


@pytest.mark.parametrize("length", [*range(0, 34), 63, 64, 65, 1000])
def test_every_tail_length(length: int) -> None:
    keys = ["x" * length, "é" * length, "a" * (length // 2)]
    assert digests(keys, 0x72733031) == reference(keys, 0x72733031)


@pytest.mark.parametrize("keys", [["a\0b"], ["a", "\0", ""], ["", "", "z\0"], ["\0\0"]])
def test_keys_with_nul_take_the_per_key_path(keys: list[str]) -> None:
    assert digests(keys, 7) == reference(keys, 7)


def test_empty_input_and_empty_keys() -> None:
    assert hash128_many([], 1).shape == (0, 2)
    assert digests(["", ""], 1) == reference(["", ""], 1)


@pytest.mark.parametrize("bad", ["abc", b"abc", ["a", 1], ["a", None], ["\udc80"]])
def test_invalid_input_is_a_clear_error(bad: object) -> None:
    with pytest.raises(InputError, match="candidate ids"):
        hash128_many(bad, 0, "candidate ids")  # type: ignore[arg-type]
