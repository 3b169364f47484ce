"""The analytic incremental step (online_learning.frozen_step) against autograd: the same loss, the same
row gradients, the same update; and the collision mask of in_batch_logits against the B x B comparison."""

from __future__ import annotations

import random

import pytest

torch = pytest.importorskip("torch")

from online_learning.frozen_step import frozen_gradients, frozen_step  # noqa: E402
from online_learning.model import Batch, TwoTower, in_batch_logits, incremental_optimizer, train_step  # noqa: E402
from tests.unit.test_model import random_batch, small_model  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Sparse invariant checks:UserWarning")


def autograd_gradients(model: TwoTower, batch: Batch) -> tuple[float, list[torch.Tensor]]:
    for p in model.embedding_parameters():
        p.grad = None
    users = model.user_vectors(batch.user_rows, batch.hist_rows, batch.hist_offsets)
    items = model.item_vectors(batch.item_rows, batch.cat_rows)
    loss = model.in_batch_loss(users, items, batch.item_keys, batch.log_q)
    loss.backward()  # type: ignore[no-untyped-call]
    grads = [p.grad.coalesce().to_dense() for p in model.embedding_parameters()]  # type: ignore[union-attr]
    for p in model.embedding_parameters():
        p.grad = None
    return float(loss.detach()), grads


def dense(model: TwoTower, grads: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
    out = []
    for p, (rows, values) in zip(model.embedding_parameters(), grads.values(), strict=True):
        out.append(torch.zeros_like(p).index_add_(0, rows, values))
    return out


@pytest.mark.parametrize(("seed", "b", "max_hist", "items"), [
    (1, 12, 4, range(1, 21)),   # distinct-ish items
    (2, 24, 6, range(1, 5)),    # many collisions: four items in 24 positives
    (3, 9, 0, range(0, 40)),    # every history empty (zero mean, no history gradient)
    (4, 1, 3, range(1, 3)),     # one positive: its only logit, a zero gradient
])
def test_gradients_and_loss_equal_autograd(seed: int, b: int, max_hist: int, items: range) -> None:
    model = small_model(seed)
    model.freeze_dense()
    batch = random_batch(random.Random(seed), b, range(0, 30), items, range(0, 8), max_hist=max_hist)
    want_loss, want = autograd_gradients(model, batch)
    loss, grads = frozen_gradients(model, batch)
    assert loss == pytest.approx(want_loss, rel=1e-5, abs=1e-6)
    for mine, ref in zip(dense(model, grads), want, strict=True):
        assert torch.allclose(mine, ref, atol=1e-6, rtol=1e-4)
    assert any(bool(g.abs().sum() > 0) for g in want) or b == 1  # the case is not trivially zero


def test_a_step_equals_the_autograd_step_and_leaves_the_towers() -> None:
    ours, ref = small_model(5), small_model(5)
    for m in (ours, ref):
        m.freeze_dense()
    towers = [p.clone() for p in ours.dense_parameters()]
    opt_ours, opt_ref = incremental_optimizer(ours, lr=0.1), incremental_optimizer(ref, lr=0.1)
    rng = random.Random(6)
    for _ in range(10):
        batch = random_batch(rng, 16, range(0, 30), range(1, 12), range(0, 8))
        assert frozen_step(ours, opt_ours, batch) == pytest.approx(train_step(ref, opt_ref, batch), rel=1e-4)
    for mine, theirs in zip(ours.embedding_parameters(), ref.embedding_parameters(), strict=True):
        assert torch.allclose(mine, theirs, atol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(towers, ours.dense_parameters(), strict=True))


def test_frozen_step_refuses_towers_that_learn() -> None:
    model = small_model()
    batch = random_batch(random.Random(0), 4, range(0, 30), range(1, 9), range(0, 8))
    with pytest.raises(ValueError, match="frozen towers"):
        frozen_step(model, incremental_optimizer(model, lr=0.1), batch)


@pytest.mark.parametrize("distinct", [1, 3, 50, 1000])
def test_collision_mask_equals_the_pairwise_comparison(distinct: int) -> None:
    g = torch.Generator().manual_seed(distinct)
    keys = torch.randint(0, distinct, (64,), generator=g)
    u, v, log_q = torch.randn(64, 8, generator=g), torch.randn(64, 8, generator=g), torch.randn(64, generator=g)
    got = in_batch_logits(u, v, keys, log_q, 0.5)
    want = (u @ v.T) / 0.5 - log_q.unsqueeze(0)
    want = want.masked_fill((keys.unsqueeze(0) == keys.unsqueeze(1)) & ~torch.eye(64, dtype=torch.bool), float("-inf"))
    assert torch.equal(torch.isinf(got), torch.isinf(want))
    assert torch.allclose(got[~torch.isinf(got)], want[~torch.isinf(want)], atol=1e-5)
