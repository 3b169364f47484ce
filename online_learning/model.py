"""The two-tower retrieval model for training (torch); serving runs the same towers in numpy (filters.towers).

Three embedding tables (users, items, categories; row 0 of each is the shared row of IDs without their own,
trained like any other) feed two MLPs that match :mod:`filters.towers` exactly:

- user vector = normalise(MLP_u(concat[user_emb[u], mean(item_emb[h] for h in history)]))
- item vector = normalise(MLP_i(concat[item_emb[i], cat_emb[c]]))

The tables are ``sparse=True``: a step's gradient only holds the rows the batch used, and the optimizers
update only those rows. Two modes:

- incremental: :meth:`TwoTower.freeze_dense` + :func:`incremental_optimizer` (Adagrad over the tables only)
  learns embedding rows while the dense weights stay bit-identical (their :meth:`TwoTower.dense_checksum`
  keeps matching the published manifest);
- full: :func:`full_optimizer` (Adam on the MLPs, Adagrad on the tables) learns both.

>>> model = TwoTower(users=10, items=20, categories=4, dim=8, category_dim=4, hidden=16, seed=1)
>>> batch = Batch.from_lists(user_rows=[1, 2, 3], histories=[[4, 5], [], [6]], item_rows=[7, 8, 7],
...                          cat_rows=[1, 2, 1], item_keys=[7, 8, 7], log_q=[-2.0, -3.0, -2.0])
>>> before = model.dense_checksum()
>>> model.freeze_dense()
>>> opt = incremental_optimizer(model, lr=0.05)
>>> losses = [train_step(model, opt, batch) for _ in range(5)]
>>> losses[-1] < losses[0], model.dense_checksum() == before
(True, True)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from filters import towers
from filters.towers import TowerWeights
from online_learning.adagrad_rows import adagrad_rows

__all__ = ["Batch", "FullOptimizer", "TwoTower", "full_optimizer", "in_batch_logits", "incremental_optimizer",
           "train_step"]

EMBEDDING_STD = 0.05


class _Tower(nn.Module):
    """``Linear(in -> hidden)`` -> ReLU -> ``Linear(hidden -> out)`` -> L2 normalise (eps 1e-12)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, generator: torch.Generator) -> None:
        super().__init__()
        # built on the meta device, so torch's default init never runs (the global RNG stays untouched)
        self.fc1 = nn.Linear(in_dim, hidden, device="meta").to_empty(device="cpu")
        self.fc2 = nn.Linear(hidden, out_dim, device="meta").to_empty(device="cpu")
        with torch.no_grad():
            for fc in (self.fc1, self.fc2):  # torch's default bounds (1/sqrt(fan_in)), from our generator
                bound = 1.0 / fc.in_features ** 0.5
                fc.weight.uniform_(-bound, bound, generator=generator)
                fc.bias.uniform_(-bound, bound, generator=generator)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.fc2(F.relu(self.fc1(x))), dim=-1, eps=towers.EPS)


def _table(rows: int, width: int, generator: torch.Generator) -> nn.Embedding:
    table = nn.Embedding(rows, width, sparse=True, device="meta").to_empty(device="cpu")
    with torch.no_grad():
        table.weight.normal_(0.0, EMBEDDING_STD, generator=generator)
    return table


class TwoTower(nn.Module):
    """The model: tables of ``users`` / ``items`` / ``categories`` rows (the caller's id tables, shared row 0
    included) and the two towers. Initialised from ``seed`` alone (its own ``torch.Generator``, the global RNG
    untouched): tables normal(0, 0.05), in the order user, item, category, then the user tower, the item tower.
    """

    def __init__(self, users: int, items: int, categories: int, dim: int = 32, category_dim: int = 16,
                 hidden: int = 64, temperature: float = 0.05, seed: int = 0) -> None:
        super().__init__()
        if min(users, items, categories) < 1:
            msg = f"every table needs at least its shared row 0, got {users=} {items=} {categories=}"
            raise ValueError(msg)
        if not temperature > 0:
            msg = f"temperature must be > 0, got {temperature}"
            raise ValueError(msg)
        self.dim, self.category_dim, self.hidden, self.temperature = dim, category_dim, hidden, float(temperature)
        g = torch.Generator().manual_seed(seed)
        self.user_emb = _table(users, dim, g)
        self.item_emb = _table(items, dim, g)
        self.cat_emb = _table(categories, category_dim, g)
        self.user_tower = _Tower(2 * dim, hidden, dim, g)
        self.item_tower = _Tower(dim + category_dim, hidden, dim, g)

    def user_vectors(self, user_rows: Tensor, hist_rows: Tensor, hist_offsets: Tensor) -> Tensor:
        """``(B, dim)`` unit vectors. User ``b``'s history is ``hist_rows[hist_offsets[b]:hist_offsets[b+1]]``
        (the last bag runs to the end); its mean comes from ``embedding_bag(mode="mean")``, which gives an
        empty bag (equal consecutive offsets) a zero vector, as ``filters.towers.history_mean`` does."""
        mean = F.embedding_bag(hist_rows, self.item_emb.weight, hist_offsets, mode="mean", sparse=True)
        return self.user_tower(torch.cat([self.user_emb(user_rows), mean], dim=1))  # type: ignore[no-any-return]

    def item_vectors(self, item_rows: Tensor, cat_rows: Tensor) -> Tensor:
        """``(B, dim)`` unit vectors of items and their categories (rows into the item and category tables)."""
        return self.item_tower(torch.cat([self.item_emb(item_rows), self.cat_emb(cat_rows)], dim=1))  # type: ignore[no-any-return]

    def in_batch_loss(self, user_vecs: Tensor, item_vecs: Tensor, item_keys: Tensor, log_q: Tensor) -> Tensor:
        """Sampled softmax over in-batch negatives with the logQ correction, mean over the batch:

        ``logits[i, j] = cos(u_i, v_j) / T - log_q[j]`` (``log_q[j]``: log of the probability that item ``j``
        is sampled into a batch, i.e. its share of positives; subtracted on every column, the positive's
        included), ``logits[i, j] = -inf`` where ``item_keys[j] == item_keys[i]`` and ``j != i`` (the same
        item twice in a batch is not a negative), and
        ``loss = mean_i( -logits[i, i] + logsumexp_j logits[i, j] )``.

        The rows are normalised here (a no-op on the towers' outputs), so any vectors work.
        """
        b = user_vecs.shape[0]
        if not (item_vecs.shape[0] == item_keys.shape[0] == log_q.shape[0] == b):
            msg = f"batch sizes differ: {b} users, {item_vecs.shape[0]} items, {item_keys.shape[0]} keys, " \
                  f"{log_q.shape[0]} log_q"
            raise ValueError(msg)
        u = F.normalize(user_vecs, dim=-1, eps=towers.EPS)
        v = F.normalize(item_vecs, dim=-1, eps=towers.EPS)
        logits = in_batch_logits(u, v, item_keys, log_q, self.temperature)
        return F.cross_entropy(logits, torch.arange(b, device=logits.device))

    def dense_parameters(self) -> list[nn.Parameter]:
        """The two MLPs' weights and biases (what :meth:`export_weights` exports)."""
        return [*self.user_tower.parameters(), *self.item_tower.parameters()]

    def embedding_parameters(self) -> list[nn.Parameter]:
        """The three tables' weights: user, item, category."""
        return [cast(nn.Parameter, t.weight) for t in (self.user_emb, self.item_emb, self.cat_emb)]

    def freeze_dense(self) -> None:
        """Stop gradients into the MLPs (and drop any they hold): incremental training leaves them bit-identical."""
        for p in self.dense_parameters():
            p.requires_grad_(False)
            p.grad = None

    def unfreeze_dense(self) -> None:
        """Let the MLPs learn again."""
        for p in self.dense_parameters():
            p.requires_grad_(True)

    def _dense_tensors(self) -> dict[str, Tensor]:
        u, i = self.user_tower, self.item_tower
        return {"u_w1": u.fc1.weight, "u_b1": u.fc1.bias, "u_w2": u.fc2.weight, "u_b2": u.fc2.bias,
                "i_w1": i.fc1.weight, "i_b1": i.fc1.bias, "i_w2": i.fc2.weight, "i_b2": i.fc2.bias}

    def export_weights(self) -> TowerWeights:
        """The MLPs as :class:`filters.towers.TowerWeights` (float32 copies) for serving and the manifest."""
        arrays: dict[str, Any] = {
            name: t.detach().cpu().numpy().astype(np.float32, copy=True) for name, t in self._dense_tensors().items()
        }
        return TowerWeights(dim=self.dim, category_dim=self.category_dim, hidden=self.hidden,
                            temperature=self.temperature, **arrays)

    def load_dense(self, weights: TowerWeights) -> None:
        """Copy a published model's MLPs in (dims must match; the temperature is taken over too)."""
        if (weights.dim, weights.category_dim, weights.hidden) != (self.dim, self.category_dim, self.hidden):
            msg = f"weights have dims {(weights.dim, weights.category_dim, weights.hidden)}, " \
                  f"the model {(self.dim, self.category_dim, self.hidden)}"
            raise ValueError(msg)
        arrays = weights.arrays()
        with torch.no_grad():
            for name, t in self._dense_tensors().items():
                t.copy_(torch.from_numpy(np.array(arrays[name], dtype=np.float32)))
        self.temperature = float(weights.temperature)

    def dense_checksum(self) -> str:
        """``filters.towers.dense_checksum`` of :meth:`export_weights`: the manifest's checksum of this model."""
        return towers.dense_checksum(self.export_weights())



def in_batch_logits(u: Tensor, v: Tensor, item_keys: Tensor, log_q: Tensor, temperature: float) -> Tensor:
    """``u @ v.T / T - log_q[j]`` with ``-inf`` where ``item_keys[j] == item_keys[i]`` and ``j != i``
    (see :meth:`TwoTower.in_batch_loss`). The collision mask is built over the columns whose key occurs
    more than once only (a handful per batch), not as a ``B x B`` comparison.

    >>> keys = torch.tensor([5, 6, 5])
    >>> torch.isinf(in_batch_logits(torch.eye(3), torch.eye(3), keys, torch.zeros(3), 1.0)).int().tolist()
    [[0, 0, 1], [0, 0, 0], [1, 0, 0]]
    """
    logits = torch.addmm(-log_q.to(u.dtype).unsqueeze(0), u, v.T, alpha=1.0 / temperature)  # one pass, not three
    _, inverse, counts = torch.unique(item_keys, return_inverse=True, return_counts=True)
    repeated = torch.nonzero(counts[inverse] > 1).flatten()
    if repeated.numel():
        group = inverse[repeated]
        same = (group.unsqueeze(0) == group.unsqueeze(1)).fill_diagonal_(False)
        rows, cols = torch.nonzero(same, as_tuple=True)
        # in place: the logits are this call's own tensor (a copy of 1,024 x 1,024 costs ~4 ms here)
        logits.index_put_((repeated[rows], repeated[cols]), torch.tensor(float("-inf"), dtype=logits.dtype))
    return logits


class RowAdagrad:
    """Adagrad for sparse row gradients, the same update as ``torch.optim.Adagrad`` (lr, no decay, initial
    accumulator 0, eps 1e-10): per table, a compiled pass sums each row's repeated gradients and torch's ops
    update the distinct rows (:func:`online_learning.adagrad_rows.adagrad_rows`), instead of torch's coalesce
    and index operations over the whole table. Only the rows a step used change.

    ``state[param]["sum"]`` is the accumulator (dense, the table's shape), so a caller can reset rows.
    """

    def __init__(self, params: list[nn.Parameter], lr: float, eps: float = 1e-10) -> None:
        self.params, self.lr, self.eps = params, lr, eps
        self.state: dict[Tensor, dict[str, Tensor]] = {p: {"sum": torch.zeros_like(p)} for p in params}
        self._slots = {p: np.full(p.shape[0], -1, np.int64) for p in params}  # the kernel's scratch

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for p in self.params:
            g = p.grad
            if g is None:
                continue
            if not g.is_sparse:
                msg = "RowAdagrad needs sparse row gradients (embedding tables built with sparse=True)"
                raise ValueError(msg)
            rows, values = g._indices()[0], g._values()  # uncoalesced: the kernel sums a row's repeats
            adagrad_rows(p.detach().numpy(), self.state[p]["sum"].numpy(), rows.numpy(), values.numpy(),
                         self.lr, self.eps, self._slots[p])

    def state_dict(self) -> dict[str, Any]:
        return {"lr": self.lr, "eps": self.eps, "sums": [self.state[p]["sum"] for p in self.params]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for p, acc in zip(self.params, state["sums"], strict=True):
            self.state[p]["sum"].copy_(acc)


def incremental_optimizer(model: TwoTower, lr: float) -> RowAdagrad:
    """Adagrad over the embedding tables only (sparse gradients, no weight decay): with
    :meth:`TwoTower.freeze_dense` the dense weights never change. Only the rows a step used are updated."""
    return RowAdagrad(model.embedding_parameters(), lr=lr)


class FullOptimizer:
    """Adam on the dense parameters plus Adagrad on the tables (``torch.optim.Adam`` refuses sparse
    gradients), stepped and zeroed together."""

    def __init__(self, dense: torch.optim.Adam, sparse: RowAdagrad) -> None:
        self.dense, self.sparse = dense, sparse

    def zero_grad(self) -> None:
        self.dense.zero_grad()
        self.sparse.zero_grad()

    def step(self) -> None:
        self.dense.step()
        self.sparse.step()

    def state_dict(self) -> dict[str, Any]:
        return {"dense": self.dense.state_dict(), "sparse": self.sparse.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.dense.load_state_dict(state["dense"])
        self.sparse.load_state_dict(state["sparse"])


def full_optimizer(model: TwoTower, lr: float, dense_lr: float = 1e-3) -> FullOptimizer:
    """Both parts learn: the tables with Adagrad at ``lr`` (the same rule as :func:`incremental_optimizer`,
    so switching modes does not change how rows learn), the MLPs with Adam at ``dense_lr``. Call
    :meth:`TwoTower.unfreeze_dense` first if the model was frozen."""
    return FullOptimizer(torch.optim.Adam(model.dense_parameters(), lr=dense_lr), incremental_optimizer(model, lr))


def _long(x: npt.ArrayLike | Tensor) -> Tensor:
    t = torch.as_tensor(np.asarray(x, dtype=np.int64) if not isinstance(x, Tensor) else x, dtype=torch.int64)
    return t.reshape(-1)


@dataclass(frozen=True)
class Batch:
    """One training batch of ``B`` positives: user rows, their histories flattened (``hist_rows``, with the
    start of each user's bag in ``hist_offsets``), the clicked items' rows and category rows, the items'
    keys (equal keys = the same item, masked as negatives; e.g. the item id's hash, so distinct items
    sharing row 0 stay negatives of each other) and ``log_q`` (float32, log sampling probability)."""

    user_rows: Tensor
    hist_rows: Tensor
    hist_offsets: Tensor
    item_rows: Tensor
    cat_rows: Tensor
    item_keys: Tensor
    log_q: Tensor

    def __post_init__(self) -> None:
        b = self.user_rows.shape[0]
        if b == 0:
            msg = "a batch needs at least one positive"
            raise ValueError(msg)
        sizes = [t.shape[0] for t in (self.hist_offsets, self.item_rows, self.cat_rows, self.item_keys, self.log_q)]
        if any(s != b for s in sizes):
            msg = f"batch fields must all have {b} rows, got {sizes} (hist_offsets, items, cats, keys, log_q)"
            raise ValueError(msg)
        offsets = self.hist_offsets
        if int(offsets[0]) != 0 or bool((offsets[1:] < offsets[:-1]).any()) \
                or int(offsets[-1]) > self.hist_rows.shape[0]:
            msg = "hist_offsets must start at 0, never decrease and stay within hist_rows"
            raise ValueError(msg)

    def __len__(self) -> int:
        return int(self.user_rows.shape[0])

    @classmethod
    def from_lists(cls, user_rows: npt.ArrayLike, histories: Sequence[Sequence[int] | npt.NDArray[np.integer[Any]]],
                   item_rows: npt.ArrayLike, cat_rows: npt.ArrayLike, item_keys: npt.ArrayLike,
                   log_q: npt.ArrayLike) -> Batch:
        """A batch from python lists / numpy arrays; ``histories[b]`` is user ``b``'s history item rows
        (possibly empty), flattened here into ``hist_rows`` + ``hist_offsets``."""
        lengths = [len(h) for h in histories]
        flat = np.concatenate([np.asarray(h, dtype=np.int64).reshape(-1) for h in histories] or [np.zeros(0, np.int64)])
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if lengths else np.zeros(0, np.int64)
        return cls(user_rows=_long(user_rows), hist_rows=_long(flat), hist_offsets=_long(offsets),
                   item_rows=_long(item_rows), cat_rows=_long(cat_rows), item_keys=_long(item_keys),
                   log_q=torch.as_tensor(np.asarray(log_q, dtype=np.float32)).reshape(-1))


def train_step(model: TwoTower, optimizer: RowAdagrad | FullOptimizer, batch: Batch) -> float:
    """One step: zero the gradients, the in-batch loss of ``batch``, backward, step; returns the loss."""
    optimizer.zero_grad()
    users = model.user_vectors(batch.user_rows, batch.hist_rows, batch.hist_offsets)
    items = model.item_vectors(batch.item_rows, batch.cat_rows)
    loss = model.in_batch_loss(users, items, batch.item_keys, batch.log_q)
    loss.backward()  # type: ignore[no-untyped-call]
    optimizer.step()
    return float(loss.item())
