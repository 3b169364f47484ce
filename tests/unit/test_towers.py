"""The serving towers (filters.towers), numpy only: math against hand-written references, the wire format,
the checksum. The torch twin's agreement is tests/unit/test_model.py."""

from __future__ import annotations

import hashlib
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from filters.towers import (
    ARRAY_NAMES,
    TowerWeights,
    decode_weights,
    dense_checksum,
    encode_weights,
    expected_shapes,
    history_mean,
    item_vectors,
    l2_normalize,
    random_weights,
    scores,
    user_vectors,
)

ROOT = Path(__file__).resolve().parents[2]


def arange_weights(dim: int = 3, category_dim: int = 2, hidden: int = 4) -> TowerWeights:
    """Weights with fixed, platform-independent values (for the pinned checksum)."""
    arrays = {}
    for k, (name, shape) in enumerate(sorted(expected_shapes(dim, category_dim, hidden).items())):
        n = int(np.prod(shape))
        arrays[name] = ((np.arange(n, dtype=np.float32) - n / 2) / np.float32(8 + k)).reshape(shape)
    return TowerWeights(dim=dim, category_dim=category_dim, hidden=hidden, temperature=0.05, **arrays)


def reference_tower(x: np.ndarray, w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray) -> np.ndarray:
    """The MLP row by row in float64 python loops."""
    out = []
    for row in x.astype(np.float64):
        h = [max(0.0, sum(w1[j, k] * row[k] for k in range(len(row))) + b1[j]) for j in range(len(b1))]
        y = [sum(w2[o, j] * h[j] for j in range(len(h))) + b2[o] for o in range(len(b2))]
        norm = max(float(np.sqrt(sum(v * v for v in y))), 1e-12)
        out.append([v / norm for v in y])
    return np.array(out)


def test_serving_never_imports_torch() -> None:
    code = "import sys, filters.towers; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=False).returncode == 0


def test_user_and_item_vectors_match_a_loop_reference() -> None:
    w = random_weights(dim=5, category_dim=3, hidden=7, seed=2)
    rng = np.random.default_rng(1)
    ue, hm = rng.normal(size=(4, 5)), rng.normal(size=(4, 5))
    hm[2] = 0.0  # a user without history
    u = user_vectors(w, ue, hm)
    assert u.dtype == np.float32 and u.shape == (4, 5)
    np.testing.assert_allclose(u, reference_tower(np.concatenate([ue, hm], 1), w.u_w1, w.u_b1, w.u_w2, w.u_b2),
                               atol=1e-5)
    ie, ce = rng.normal(size=(6, 5)), rng.normal(size=(6, 3))
    v = item_vectors(w, ie, ce)
    assert v.dtype == np.float32 and v.shape == (6, 5)
    np.testing.assert_allclose(v, reference_tower(np.concatenate([ie, ce], 1), w.i_w1, w.i_b1, w.i_w2, w.i_b2),
                               atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-6)


def test_shape_errors() -> None:
    w = random_weights(dim=4, category_dim=2, hidden=3)
    with pytest.raises(ValueError, match="user_emb"):
        user_vectors(w, np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="rows"):
        user_vectors(w, np.zeros((2, 4)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="category_emb"):
        item_vectors(w, np.zeros((2, 4)), np.zeros((2, 4)))


def test_l2_normalize_keeps_zero_rows_and_follows_torch_eps() -> None:
    x = np.array([[3.0, 4.0], [0.0, 0.0], [1e-14, 0.0]], dtype=np.float32)
    y = l2_normalize(x)
    np.testing.assert_allclose(y[0], [0.6, 0.8], rtol=1e-6)
    assert np.array_equal(y[1], [0.0, 0.0])
    np.testing.assert_allclose(y[2], [1e-2, 0.0], rtol=1e-5)  # below eps: divided by eps, not by its norm
    assert y.dtype == np.float32


def test_history_mean() -> None:
    rows = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.testing.assert_array_equal(history_mean(rows), rows.mean(axis=0, keepdims=True))
    np.testing.assert_array_equal(history_mean(list(rows)), rows.mean(axis=0, keepdims=True))
    assert np.array_equal(history_mean(np.zeros((0, 3))), np.zeros((1, 3))) and history_mean([], dim=3).shape == (1, 3)
    assert history_mean([], dim=3).dtype == np.float32
    with pytest.raises(ValueError, match="needs dim"):
        history_mean([])
    with pytest.raises(ValueError, match="shape"):
        history_mean(rows, dim=4)


def test_scores_are_dot_over_temperature() -> None:
    rng = np.random.default_rng(3)
    u, v = l2_normalize(rng.normal(size=(2, 4))), l2_normalize(rng.normal(size=(5, 4)))
    s = scores(u, v, 0.05)
    assert s.shape == (2, 5) and s.dtype == np.float32
    for i in range(2):
        np.testing.assert_allclose(scores(u[i], v, 0.05), s[i], rtol=1e-6)
        for j in range(5):
            assert s[i, j] == pytest.approx(float(np.dot(u[i].astype(np.float64), v[j])) / 0.05, rel=1e-5)


def test_round_trip_is_exact_even_for_special_values() -> None:
    w = random_weights(dim=4, category_dim=3, hidden=5, temperature=0.07, seed=9)
    w.u_w1[0, :4] = np.array([-0.0, 1e-45, np.inf, np.nan], dtype=np.float32)  # -0, a subnormal, inf, nan
    data = encode_weights(w)
    w2 = decode_weights(data)
    assert (w2.dim, w2.category_dim, w2.hidden, w2.temperature) == (4, 3, 5, 0.07)
    for name in ARRAY_NAMES:
        a, b = getattr(w, name), getattr(w2, name)
        assert a.shape == b.shape and b.dtype == np.float32 and a.tobytes() == b.tobytes()
        assert b.flags.writeable
    assert encode_weights(w2) == data and dense_checksum(w2) == dense_checksum(w)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 6), st.integers(1, 4), st.integers(1, 6), st.floats(1e-3, 10), st.integers(0, 2**32 - 1))
def test_round_trip_any_dims(dim: int, category_dim: int, hidden: int, temperature: float, seed: int) -> None:
    w = random_weights(dim, category_dim, hidden, temperature, seed)
    w2 = decode_weights(encode_weights(w))
    assert w2.temperature == temperature
    assert all(np.array_equal(getattr(w, n), getattr(w2, n)) for n in ARRAY_NAMES)


def test_decode_rejects_malformed_data() -> None:
    w = random_weights(dim=2, category_dim=1, hidden=3)
    raw = msgspec.msgpack.decode(encode_weights(w))
    with pytest.raises(ValueError, match="version"):
        decode_weights(msgspec.msgpack.encode({**raw, "version": 99}))
    with pytest.raises(ValueError, match="exactly"):
        missing = {k: v for k, v in raw["arrays"].items() if k != "u_b1"}
        decode_weights(msgspec.msgpack.encode({**raw, "arrays": missing}))
    truncated = {**raw["arrays"], "u_w1": [raw["arrays"]["u_w1"][0], raw["arrays"]["u_w1"][1][:-4]]}
    with pytest.raises(ValueError, match="bytes"):
        decode_weights(msgspec.msgpack.encode({**raw, "arrays": truncated}))
    reshaped = {**raw["arrays"], "u_w1": [[4, 3], raw["arrays"]["u_w1"][1]]}  # right size, wrong shape
    with pytest.raises(ValueError, match="u_w1"):
        decode_weights(msgspec.msgpack.encode({**raw, "arrays": reshaped}))
    with pytest.raises(msgspec.ValidationError):
        decode_weights(msgspec.msgpack.encode({"version": 1}))


def test_weights_are_checked_on_creation() -> None:
    arrays: dict[str, Any] = random_weights(dim=2, category_dim=1, hidden=4).arrays()
    with pytest.raises(ValueError, match="float32"):
        TowerWeights(dim=2, category_dim=1, hidden=4, temperature=0.05, **{**arrays, "i_b2": arrays["i_b2"] * 1.0j})
    with pytest.raises(ValueError, match="shape"):
        TowerWeights(dim=2, category_dim=1, hidden=4, temperature=0.05, **{**arrays, "i_w1": arrays["i_w1"].T.copy()})
    with pytest.raises(ValueError, match="float32"):
        TowerWeights(dim=2, category_dim=1, hidden=4, temperature=0.05, **{**arrays, "u_b1": [0.0] * 4})
    with pytest.raises(ValueError, match="temperature"):
        TowerWeights(dim=2, category_dim=1, hidden=4, temperature=0.0, **arrays)


def test_checksum_is_pinned() -> None:
    """The format of the checksum is a contract with published manifests: changing it must be deliberate."""
    w = arange_weights()
    h = hashlib.sha256(b"recstream.towers.dense/1\0" + struct.pack("<qqq", 3, 2, 4))
    for name in sorted(expected_shapes(3, 2, 4)):
        a = getattr(w, name)
        h.update(name.encode() + b"\0" + struct.pack(f"<{a.ndim}q", *a.shape) + a.astype("<f4").tobytes())
    assert dense_checksum(w) == h.hexdigest() == "72c984e59bc080a841b5b4e4e673c5277450906dfbae147c24f328f164a0586b"


def test_checksum_changes_with_any_element_and_ignores_memory_layout() -> None:
    w = random_weights(dim=3, category_dim=2, hidden=4, seed=4)
    base = dense_checksum(w)
    seen = {base}
    for name in ARRAY_NAMES:
        arrays = {k: a.copy() for k, a in w.arrays().items()}
        flat = arrays[name].reshape(-1)
        flat[-1] = np.nextafter(flat[-1], np.float32(np.inf))  # one ulp of one element
        seen.add(dense_checksum(TowerWeights(dim=3, category_dim=2, hidden=4, temperature=0.05, **arrays)))
    assert len(seen) == len(ARRAY_NAMES) + 1
    fortran = {k: np.asfortranarray(a) for k, a in w.arrays().items()}
    assert dense_checksum(TowerWeights(dim=3, category_dim=2, hidden=4, temperature=0.05, **fortran)) == base
    hot = TowerWeights(dim=3, category_dim=2, hidden=4, temperature=0.5, **w.arrays())
    assert dense_checksum(hot) == base  # the temperature is not a dense weight
