"""The incremental training step with the towers frozen: embedding-row gradients by hand, no autograd.

With the MLPs frozen the only parameters that learn are embedding rows, and the gradient of the in-batch
loss (:meth:`~online_learning.model.TwoTower.in_batch_loss`) with respect to them is a few matrix
products: softmax minus identity, back through the two unit normalisations, the frozen ``Linear`` layers
and ReLU, then scattered to the rows the batch used (a history item gets ``1 / len(history)`` of its
bag's gradient, as ``embedding_bag(mode="mean")``'s backward gives it). :func:`frozen_step` computes them,
hands them to :class:`~online_learning.model.RowAdagrad` as sparse gradients and steps it — the same
update as :func:`~online_learning.model.train_step` (equal within float rounding, tested), at a fraction
of the cost: autograd's graph, its ``B x B`` mask backward and its sparse-gradient bookkeeping were half
of a 1,024-sample step (docs/learning.md).

>>> from online_learning.model import Batch, TwoTower, incremental_optimizer
>>> model = TwoTower(users=10, items=20, categories=4, dim=8, category_dim=4, hidden=16, seed=1)
>>> batch = Batch.from_lists(user_rows=[1, 2, 3], histories=[[4, 5], [], [6]], item_rows=[7, 8, 7],
...                          cat_rows=[1, 2, 1], item_keys=[7, 8, 7], log_q=[-2.0, -3.0, -2.0])
>>> model.freeze_dense()
>>> before = model.dense_checksum()
>>> opt = incremental_optimizer(model, lr=0.05)
>>> losses = [frozen_step(model, opt, batch) for _ in range(5)]
>>> losses[-1] < losses[0], model.dense_checksum() == before
(True, True)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from filters import towers
from online_learning.model import Batch, RowAdagrad, TwoTower, _Tower, in_batch_logits

__all__ = ["frozen_gradients", "frozen_step"]


def _forward(tower: _Tower, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The tower's unit output, its pre-ReLU activation and the output's norm clamped at ``towers.EPS``."""
    pre = F.linear(x, tower.fc1.weight, tower.fc1.bias)
    out = F.linear(pre.clamp_min(0.0), tower.fc2.weight, tower.fc2.bias)
    norm = out.norm(dim=1, keepdim=True).clamp_min_(towers.EPS)
    return out / norm, pre, norm


def _backward(tower: _Tower, unit: Tensor, pre: Tensor, norm: Tensor, grad_unit: Tensor) -> Tensor:
    """d loss / d tower input, from d loss / d unit output (``normalize``: project out ``unit``, / norm,
    unless the norm was clamped; then ReLU and the two frozen layers)."""
    radial = (unit * grad_unit).sum(dim=1, keepdim=True) * (norm > towers.EPS)
    grad_out = (grad_unit - unit * radial) / norm
    grad_pre = (grad_out @ tower.fc2.weight).mul_(pre > 0)
    return grad_pre @ tower.fc1.weight


@torch.no_grad()
def frozen_gradients(model: TwoTower, batch: Batch) -> tuple[float, dict[str, tuple[Tensor, Tensor]]]:
    """The in-batch loss and, per table (``"user"``, ``"item"``, ``"category"``), the uncoalesced rows and
    row gradients (a row used twice appears twice; summing them gives autograd's gradient)."""
    d, b = model.dim, len(batch)
    lengths = torch.diff(batch.hist_offsets, append=torch.tensor([batch.hist_rows.shape[0]]))
    mean = F.embedding_bag(batch.hist_rows, model.item_emb.weight, batch.hist_offsets, mode="mean")
    user_in = torch.cat([model.user_emb.weight[batch.user_rows], mean], dim=1)
    item_in = torch.cat([model.item_emb.weight[batch.item_rows], model.cat_emb.weight[batch.cat_rows]], dim=1)
    u, u_pre, u_norm = _forward(model.user_tower, user_in)
    v, v_pre, v_norm = _forward(model.item_tower, item_in)
    logits = in_batch_logits(u, v, batch.item_keys, batch.log_q, model.temperature)
    log_p = torch.log_softmax(logits, dim=1)
    loss = -log_p.diagonal().mean()
    grad_logits = log_p.exp_()
    grad_logits.diagonal().sub_(1.0)
    grad_logits.mul_(1.0 / (b * model.temperature))  # d loss / d (u @ v.T), the 1 / T folded in
    grad_user_in = _backward(model.user_tower, u, u_pre, u_norm, grad_logits @ v)
    grad_item_in = _backward(model.item_tower, v, v_pre, v_norm, grad_logits.T @ u)
    bag = torch.repeat_interleave(torch.arange(b), lengths)
    per_item = grad_user_in[:, d:] / lengths.clamp_min(1).unsqueeze(1).to(grad_user_in.dtype)
    grads = {"user": (batch.user_rows, grad_user_in[:, :d]),
             "item": (torch.cat([batch.item_rows, batch.hist_rows]), torch.cat([grad_item_in[:, :d], per_item[bag]])),
             "category": (batch.cat_rows, grad_item_in[:, d:])}
    return float(loss), grads


def frozen_step(model: TwoTower, optimizer: RowAdagrad, batch: Batch) -> float:
    """One incremental step (towers frozen, :meth:`TwoTower.freeze_dense`): the gradients of
    :func:`frozen_gradients` as sparse gradients of the tables, then ``optimizer.step()``; returns the loss."""
    if any(p.requires_grad for p in model.dense_parameters()):
        msg = "frozen_step needs frozen towers (TwoTower.freeze_dense); use train_step to train them"
        raise ValueError(msg)
    loss, grads = frozen_gradients(model, batch)
    optimizer.zero_grad()
    for table, (rows, values) in zip((model.user_emb, model.item_emb, model.cat_emb), grads.values(), strict=True):
        weight = table.weight
        weight.grad = torch.sparse_coo_tensor(rows.unsqueeze(0), values, weight.shape, check_invariants=False)
    optimizer.step()
    return loss
