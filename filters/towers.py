"""The two-tower retrieval model at serving time: numpy only (the trainer's torch twin is online_learning.model).

Both towers are the same two-layer MLP on concatenated embeddings, laid out like ``torch.nn.Linear``
(``y = x @ W.T + b``), then L2-normalised:

- user tower: ``concat[user_emb (dim), mean of the history's item embeddings (dim)]`` ->
  ``Linear(2*dim -> hidden)`` -> ReLU -> ``Linear(hidden -> dim)`` -> L2 normalise;
- item tower: ``concat[item_emb (dim), category_emb (category_dim)]`` ->
  ``Linear(dim+category_dim -> hidden)`` -> ReLU -> ``Linear(hidden -> dim)`` -> L2 normalise;
- score: ``cosine(user, item) / temperature`` (the vectors are unit length, so a dot product over ``T``).

:class:`TowerWeights` holds the dense (MLP) part; the embedding rows come from elsewhere (the feature
store). :func:`encode_weights` / :func:`decode_weights` move it as msgpack (raw float32 little-endian
bytes + shapes, exact), and :func:`dense_checksum` names it: the trainer computes the same hex from its
torch parameters (``TwoTower.dense_checksum``), so a manifest can pin which dense weights a model
version was trained with. Everything is float32.

>>> w = random_weights(dim=4, category_dim=2, hidden=8, seed=1)
>>> rng = np.random.default_rng(0)
>>> u = user_vectors(w, rng.normal(size=(1, 4)), history_mean(rng.normal(size=(3, 4))))
>>> v = item_vectors(w, rng.normal(size=(5, 4)), rng.normal(size=(5, 2)))
>>> u.shape, v.shape, u.dtype, abs(float(np.linalg.norm(u[0])) - 1.0) < 1e-6
((1, 4), (5, 4), dtype('float32'), True)
>>> s = scores(u[0], v, w.temperature)
>>> s.shape, bool(np.all(np.abs(s) <= 1 / w.temperature + 1e-3))
((5,), True)
>>> dense_checksum(decode_weights(encode_weights(w))) == dense_checksum(w)
True
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Sequence
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

__all__ = ["ARRAY_NAMES", "EPS", "TowerWeights", "decode_weights", "dense_checksum", "encode_weights",
           "expected_shapes", "history_mean", "item_vectors", "l2_normalize", "random_weights", "scores",
           "user_vectors"]

F32 = npt.NDArray[np.float32]

#: The dense arrays, sorted by name: the order of :func:`dense_checksum` (and of nothing else).
ARRAY_NAMES = ("i_b1", "i_b2", "i_w1", "i_w2", "u_b1", "u_b2", "u_w1", "u_w2")
#: The norm floor of :func:`l2_normalize`, as ``torch.nn.functional.normalize``'s default.
EPS = 1e-12
WIRE_VERSION = 1
_CHECKSUM_TAG = b"recstream.towers.dense/1\0"


def expected_shapes(dim: int, category_dim: int, hidden: int) -> dict[str, tuple[int, ...]]:
    """The shape of every dense array for these dims (torch ``nn.Linear`` layout: ``(out, in)``).

    >>> expected_shapes(4, 2, 8)["i_w1"], expected_shapes(4, 2, 8)["u_w2"]
    ((8, 6), (4, 8))
    """
    return {"u_w1": (hidden, 2 * dim), "u_b1": (hidden,), "u_w2": (dim, hidden), "u_b2": (dim,),
            "i_w1": (hidden, dim + category_dim), "i_b1": (hidden,), "i_w2": (dim, hidden), "i_b2": (dim,)}


class TowerWeights(msgspec.Struct, frozen=True, kw_only=True, eq=False):
    """The dense weights of both towers: dims, temperature and eight float32 arrays (checked on creation).

    Equality is identity (arrays have no single truth value): compare :func:`dense_checksum` instead.
    Treat the arrays as read-only; a changed array is a different model (and checksum).
    """

    dim: int
    category_dim: int
    hidden: int
    temperature: float
    u_w1: F32
    u_b1: F32
    u_w2: F32
    u_b2: F32
    i_w1: F32
    i_b1: F32
    i_w2: F32
    i_b2: F32

    def __post_init__(self) -> None:
        if min(self.dim, self.category_dim, self.hidden) < 1:
            msg = f"tower dims must be >= 1, got dim={self.dim} category_dim={self.category_dim} hidden={self.hidden}"
            raise ValueError(msg)
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            msg = f"temperature must be a finite number > 0, got {self.temperature}"
            raise ValueError(msg)
        for name, shape in expected_shapes(self.dim, self.category_dim, self.hidden).items():
            a = getattr(self, name)
            if not isinstance(a, np.ndarray) or a.dtype != np.float32 or a.shape != shape:
                got = (getattr(a, "dtype", type(a).__name__), getattr(a, "shape", None))
                msg = f"{name} must be a float32 array of shape {shape}, got {got}"
                raise ValueError(msg)

    def arrays(self) -> dict[str, F32]:
        """The dense arrays by name, in :data:`ARRAY_NAMES` order."""
        return {name: getattr(self, name) for name in ARRAY_NAMES}


class _Array(msgspec.Struct, array_like=True, frozen=True):
    shape: tuple[int, ...]
    data: bytes  # float32 little-endian, C order


class _Wire(msgspec.Struct, frozen=True, kw_only=True):
    version: int
    dim: int
    category_dim: int
    hidden: int
    temperature: float
    arrays: dict[str, _Array]


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(_Wire)


def encode_weights(w: TowerWeights) -> bytes:
    """msgpack of the dims, temperature and every array as ``(shape, raw float32 LE bytes)``: exact.

    >>> w = random_weights(dim=2, category_dim=1, hidden=3)
    >>> w2 = decode_weights(encode_weights(w))
    >>> all(np.array_equal(a, b) for a, b in zip(w.arrays().values(), w2.arrays().values())), w2.temperature
    (True, 0.05)
    """
    arrays = {name: _Array(a.shape, np.ascontiguousarray(a, dtype="<f4").tobytes()) for name, a in w.arrays().items()}
    return _encoder.encode(_Wire(version=WIRE_VERSION, dim=w.dim, category_dim=w.category_dim, hidden=w.hidden,
                                 temperature=w.temperature, arrays=arrays))


def decode_weights(data: bytes) -> TowerWeights:
    """The weights :func:`encode_weights` wrote (fresh, writable, native float32 arrays).

    Raises ``ValueError`` on an unknown version, a missing or extra array, or a size that does not add up
    (``msgspec.ValidationError``, a ``ValueError``, when the msgpack itself has the wrong shape).
    """
    wire = _decoder.decode(data)
    if wire.version != WIRE_VERSION:
        msg = f"tower weights wire version {wire.version} is not {WIRE_VERSION}"
        raise ValueError(msg)
    if set(wire.arrays) != set(ARRAY_NAMES):
        msg = f"tower weights must hold exactly {list(ARRAY_NAMES)}, got {sorted(wire.arrays)}"
        raise ValueError(msg)
    arrays: dict[str, Any] = {}
    for name, arr in wire.arrays.items():
        if len(arr.data) != 4 * math.prod(arr.shape):
            msg = f"{name}: {len(arr.data)} bytes do not hold float32 shape {arr.shape}"
            raise ValueError(msg)
        arrays[name] = np.frombuffer(arr.data, dtype="<f4").reshape(arr.shape).astype(np.float32)
    return TowerWeights(dim=wire.dim, category_dim=wire.category_dim, hidden=wire.hidden,
                        temperature=wire.temperature, **arrays)


def dense_checksum(w: TowerWeights) -> str:
    """sha256 hex over a format tag, the dims ``(dim, category_dim, hidden)`` and, per array in sorted name
    order, its name, shape and float32 little-endian bytes. The temperature is not part of it.

    >>> w = random_weights(dim=2, category_dim=1, hidden=3, seed=5)
    >>> dense_checksum(w) == dense_checksum(random_weights(dim=2, category_dim=1, hidden=3, seed=5))
    True
    >>> dense_checksum(w) != dense_checksum(random_weights(dim=2, category_dim=1, hidden=3, seed=6))
    True
    """
    h = hashlib.sha256(_CHECKSUM_TAG)
    h.update(struct.pack("<3q", w.dim, w.category_dim, w.hidden))
    for name, a in w.arrays().items():
        h.update(name.encode() + b"\0")
        h.update(struct.pack(f"<{a.ndim}q", *a.shape))
        h.update(np.ascontiguousarray(a, dtype="<f4").tobytes())
    return h.hexdigest()


def random_weights(dim: int, category_dim: int, hidden: int, temperature: float = 0.05, seed: int = 0) -> TowerWeights:
    """Random weights (uniform ``±1/sqrt(fan_in)``, numpy's generator) for tests and examples; the trainer's
    own initialisation is ``online_learning.model.TwoTower``'s."""
    rng = np.random.default_rng(seed)
    shapes = expected_shapes(dim, category_dim, hidden)
    arrays = {}
    for name, shape in shapes.items():
        fan_in = shapes[name.replace("_b", "_w")][1]  # a bias takes its layer's fan-in
        arrays[name] = rng.uniform(-1.0, 1.0, size=shape).astype(np.float32) / np.float32(math.sqrt(fan_in))
    return TowerWeights(dim=dim, category_dim=category_dim, hidden=hidden, temperature=temperature, **arrays)


def _rows(x: npt.ArrayLike, width: int, what: str) -> F32:
    a = np.asarray(x, dtype=np.float32)
    if a.ndim != 2 or a.shape[1] != width:
        msg = f"{what} must have shape (B, {width}), got {a.shape}"
        raise ValueError(msg)
    return a


def l2_normalize(x: npt.ArrayLike) -> F32:
    """Each row over ``max(norm, 1e-12)`` (as ``torch.nn.functional.normalize``): zero rows stay zero.

    >>> l2_normalize([[3.0, 4.0], [0.0, 0.0]])
    array([[0.6, 0.8],
           [0. , 0. ]], dtype=float32)
    """
    a = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(a, axis=-1, keepdims=True)
    out: F32 = (a / np.maximum(norms, np.float32(EPS))).astype(np.float32, copy=False)
    return out


def _mlp(x: F32, w1: F32, b1: F32, w2: F32, b2: F32) -> F32:
    h = np.maximum(x @ w1.T + b1, np.float32(0.0))
    return l2_normalize(h @ w2.T + b2)


def user_vectors(w: TowerWeights, user_emb: npt.ArrayLike, history_means: npt.ArrayLike) -> F32:
    """The user tower: ``(B, dim)`` unit vectors from user embeddings and history means, both ``(B, dim)``
    (a user without history has a zero mean: :func:`history_mean`)."""
    u = _rows(user_emb, w.dim, "user_emb")
    m = _rows(history_means, w.dim, "history_mean")
    if len(u) != len(m):
        msg = f"user_emb has {len(u)} rows, history_mean {len(m)}"
        raise ValueError(msg)
    return _mlp(np.concatenate([u, m], axis=1), w.u_w1, w.u_b1, w.u_w2, w.u_b2)


def item_vectors(w: TowerWeights, item_emb: npt.ArrayLike, category_emb: npt.ArrayLike) -> F32:
    """The item tower: ``(B, dim)`` unit vectors from item ``(B, dim)`` and category ``(B, category_dim)``
    embeddings."""
    i = _rows(item_emb, w.dim, "item_emb")
    c = _rows(category_emb, w.category_dim, "category_emb")
    if len(i) != len(c):
        msg = f"item_emb has {len(i)} rows, category_emb {len(c)}"
        raise ValueError(msg)
    return _mlp(np.concatenate([i, c], axis=1), w.i_w1, w.i_b1, w.i_w2, w.i_b2)


def history_mean(item_embs: npt.ArrayLike | Sequence[npt.ArrayLike], dim: int | None = None) -> F32:
    """The ``(1, dim)`` mean of a history's ``(n, dim)`` item embeddings (a list of rows works too); zeros
    when ``n == 0``, as the trainer's ``embedding_bag(mode="mean")`` gives an empty bag. An empty list
    carries no width: pass ``dim`` then. Stack several users' means with ``np.concatenate``.

    >>> history_mean([[1.0, 2.0], [3.0, 6.0]])
    array([[2., 4.]], dtype=float32)
    >>> history_mean([], dim=3)
    array([[0., 0., 0.]], dtype=float32)
    """
    a = np.asarray(item_embs, dtype=np.float32)
    if a.size == 0:
        width = dim if dim is not None else (a.shape[1] if a.ndim == 2 else None)
        if width is None:
            msg = "history_mean of an empty history needs dim"
            raise ValueError(msg)
        return np.zeros((1, width), dtype=np.float32)
    if a.ndim != 2 or (dim is not None and a.shape[1] != dim):
        msg = f"history item embeddings must have shape (n, {dim or 'dim'}), got {a.shape}"
        raise ValueError(msg)
    mean: F32 = a.mean(axis=0, dtype=np.float32, keepdims=True)
    return mean


def scores(user_vec: npt.ArrayLike, item_vecs: npt.ArrayLike, temperature: float) -> F32:
    """``cosine / temperature`` of unit vectors: a ``(dim,)`` user against ``(N, dim)`` items gives ``(N,)``,
    ``(B, dim)`` users give ``(B, N)``.

    >>> scores([1.0, 0.0], [[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], 0.5)
    array([ 2.,  0., -2.], dtype=float32)
    """
    u = np.asarray(user_vec, dtype=np.float32)
    v = np.asarray(item_vecs, dtype=np.float32)
    return ((u @ v.T) / np.float32(temperature)).astype(np.float32, copy=False)
