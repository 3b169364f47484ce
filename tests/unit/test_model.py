"""The training two-tower (online_learning.model): agreement with the numpy serving towers, the in-batch loss
against a brute-force reference, sparse incremental updates that leave the dense weights bit-identical, and a
learning sanity check."""

from __future__ import annotations

import math
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from filters import towers  # noqa: E402
from online_learning.model import (  # noqa: E402
    Batch,
    FullOptimizer,
    TwoTower,
    full_optimizer,
    incremental_optimizer,
    train_step,
)

if TYPE_CHECKING:
    from torch import Tensor

ROOT = Path(__file__).resolve().parents[2]
# torch's sparse COO construction inside Adagrad warns once per process; nothing to act on here
pytestmark = pytest.mark.filterwarnings("ignore:Sparse invariant checks:UserWarning")


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_model(seed: int = 0) -> TwoTower:
    return TwoTower(users=30, items=40, categories=8, dim=8, category_dim=4, hidden=16, temperature=0.1, seed=seed)


def random_batch(rng: random.Random, b: int, users: range, items: range, cats: range, max_hist: int = 4) -> Batch:
    item_rows = [rng.choice(items) for _ in range(b)]
    return Batch.from_lists(
        user_rows=[rng.choice(users) for _ in range(b)],
        histories=[[rng.choice(items) for _ in range(rng.randrange(max_hist + 1))] for _ in range(b)],
        item_rows=item_rows, cat_rows=[rng.choice(cats) for _ in range(b)], item_keys=item_rows,
        log_q=[math.log(rng.uniform(0.01, 0.5)) for _ in range(b)],
    )


def test_numpy_and_torch_towers_agree() -> None:
    model = small_model(seed=3)
    w = model.export_weights()
    user_rows, hist = [1, 2, 3, 4, 5], [[4, 5, 6], [], [7], [8, 9, 10, 11], []]  # empty bags mid-batch and last
    batch = Batch.from_lists(user_rows, hist, [1, 2, 3, 4, 5], [1, 2, 3, 1, 2], [1, 2, 3, 4, 5], [0.0] * 5)
    with torch.no_grad():
        tu = model.user_vectors(batch.user_rows, batch.hist_rows, batch.hist_offsets).numpy()
        tv = model.item_vectors(batch.item_rows, batch.cat_rows).numpy()
        no_rows, zero_offsets = torch.zeros(0, dtype=torch.int64), torch.zeros(2, dtype=torch.int64)
        none = model.user_vectors(batch.user_rows[:2], no_rows, zero_offsets)
    items = model.item_emb.weight.detach().numpy()
    means = np.concatenate([towers.history_mean(items[h], dim=8) for h in hist])
    nu = towers.user_vectors(w, model.user_emb.weight.detach().numpy()[user_rows], means)
    nv = towers.item_vectors(w, items[[1, 2, 3, 4, 5]], model.cat_emb.weight.detach().numpy()[[1, 2, 3, 1, 2]])
    np.testing.assert_allclose(tu, nu, atol=1e-5)
    np.testing.assert_allclose(tv, nv, atol=1e-5)
    # an empty bag is the zero mean, as in a batch without any history (hist_rows empty)
    np.testing.assert_allclose(none.numpy(), towers.user_vectors(w, model.user_emb.weight.detach().numpy()[[1, 2]],
                                                                 np.zeros((2, 8))), atol=1e-5)
    np.testing.assert_allclose(tu[1], none.numpy()[1], atol=1e-6)
    assert np.array_equal(towers.scores(nu, nv, w.temperature), (nu @ nv.T) / np.float32(0.1))


def brute_force_loss(u: np.ndarray, v: np.ndarray, keys: list[int], log_q: list[float],
                     t: float) -> tuple[float, float]:
    """(masked, unmasked) mean softmax cross-entropy over the batch, python loops in float64."""
    def cos(a: np.ndarray, b: np.ndarray) -> float:
        return float(sum(x * y for x, y in zip(a, b, strict=True)) / (math.hypot(*a) * math.hypot(*b)))

    b = len(keys)
    masked = unmasked = 0.0
    for i in range(b):
        logits = [cos(u[i], v[j]) / t - log_q[j] for j in range(b)]
        kept = [logits[j] for j in range(b) if j == i or keys[j] != keys[i]]
        masked += -logits[i] + math.log(sum(math.exp(x) for x in kept))
        unmasked += -logits[i] + math.log(sum(math.exp(x) for x in logits))
    return masked / b, unmasked / b


def test_in_batch_loss_is_the_masked_logq_softmax() -> None:
    model = small_model()
    g = torch.Generator().manual_seed(5)
    keys = [11, 12, 11, 13, 14, 12, 15, 11, 16]  # item 11 three times, 12 twice: the same vector each time
    distinct = {k: torch.randn(8, generator=g) * 3 for k in sorted(set(keys))}  # not normalised: cosines anyway
    u, v = torch.randn(9, 8, generator=g), torch.stack([distinct[k] for k in keys])
    log_q = [math.log(p) for p in (0.3, 0.05, 0.3, 0.01, 0.2, 0.05, 0.02, 0.3, 0.07)]
    loss = model.in_batch_loss(u, v, torch.tensor(keys), torch.tensor(log_q))
    masked, unmasked = brute_force_loss(u.numpy(), v.numpy(), keys, log_q, 0.1)
    assert loss.item() == pytest.approx(masked, rel=1e-5)
    assert abs(masked - unmasked) > 0.05  # the collisions matter, so the masking is what matched
    assert model.in_batch_loss(u, v, torch.arange(9), torch.tensor(log_q)).item() == pytest.approx(unmasked, rel=1e-5)
    uniform = model.in_batch_loss(u, v, torch.tensor(keys), torch.zeros(9)).item()
    assert uniform != pytest.approx(masked, rel=1e-3)  # log_q is applied


def test_loss_gradient_is_finite_with_collisions_and_sizes_are_checked() -> None:
    model = small_model()
    v = torch.randn(4, 8, requires_grad=True)
    loss = model.in_batch_loss(torch.randn(4, 8), v, torch.tensor([1, 2, 1, 3]), torch.zeros(4))
    loss.backward()  # type: ignore[no-untyped-call]
    assert v.grad is not None and torch.isfinite(v.grad).all()
    with pytest.raises(ValueError, match="batch sizes"):
        model.in_batch_loss(torch.randn(4, 8), v, torch.tensor([1, 2, 3]), torch.zeros(4))


def snapshot(model: TwoTower) -> tuple[list[Tensor], list[Tensor]]:
    """Copies of (dense parameters, embedding tables)."""
    dense = [p.detach().clone() for p in model.dense_parameters()]
    return dense, [p.detach().clone() for p in model.embedding_parameters()]


def assert_only_used_rows_changed(before: list[Tensor], after: list[Tensor], used: list[set[int]]) -> None:
    for old, new, rows in zip(before, after, used, strict=True):
        changed = {r for r in range(old.shape[0]) if not torch.equal(old[r], new[r])}
        assert changed == rows


def test_incremental_steps_leave_dense_bit_identical_and_touch_only_used_rows() -> None:
    model = small_model(seed=1)
    checksum = model.dense_checksum()
    dense0, emb0 = snapshot(model)
    model.freeze_dense()
    opt = incremental_optimizer(model, lr=0.05)
    rng, used = random.Random(2), [set[int](), set[int](), set[int]()]
    for _ in range(20):
        batch = random_batch(rng, 12, range(1, 16), range(1, 21), range(1, 4))
        train_step(model, opt, batch)
        used[0] |= set(batch.user_rows.tolist())
        used[1] |= set(batch.item_rows.tolist()) | set(batch.hist_rows.tolist())
        used[2] |= set(batch.cat_rows.tolist())
    dense1, emb1 = snapshot(model)
    assert all(torch.equal(a, b) for a, b in zip(dense0, dense1, strict=True))
    assert all(p.grad is None for p in model.dense_parameters())
    assert model.dense_checksum() == checksum
    assert_only_used_rows_changed(emb0, emb1, used)
    model.unfreeze_dense()
    assert all(p.requires_grad for p in model.dense_parameters())


def test_full_optimizer_changes_dense_and_used_rows() -> None:
    model = small_model(seed=2)
    checksum = model.dense_checksum()
    dense0, emb0 = snapshot(model)
    opt = full_optimizer(model, lr=0.05, dense_lr=1e-2)
    assert isinstance(opt, FullOptimizer)
    batch = random_batch(random.Random(4), 10, range(1, 6), range(1, 9), range(1, 3))
    for _ in range(3):
        train_step(model, opt, batch)
    dense1, emb1 = snapshot(model)
    assert all(not torch.equal(a, b) for a, b in zip(dense0, dense1, strict=True))
    assert model.dense_checksum() != checksum
    used = [set(batch.user_rows.tolist()), set(batch.item_rows.tolist()) | set(batch.hist_rows.tolist()),
            set(batch.cat_rows.tolist())]
    assert_only_used_rows_changed(emb0, emb1, used)
    state = opt.state_dict()
    opt2 = full_optimizer(model, lr=0.05, dense_lr=1e-2)
    opt2.load_state_dict(state)
    assert opt2.dense.state_dict()["state"].keys() == state["dense"]["state"].keys()


def test_export_encode_decode_load_round_trip() -> None:
    model = small_model(seed=6)
    w = towers.decode_weights(towers.encode_weights(model.export_weights()))
    assert towers.dense_checksum(w) == model.dense_checksum()
    other = small_model(seed=7)
    assert other.dense_checksum() != model.dense_checksum()
    other.load_dense(w)
    assert other.dense_checksum() == model.dense_checksum()
    assert all(torch.equal(a, b) for a, b in zip(other.dense_parameters(), model.dense_parameters(), strict=True))
    with pytest.raises(ValueError, match="dims"):
        TwoTower(users=3, items=3, categories=3, dim=4, category_dim=4, hidden=16).load_dense(w)


CHECKSUM_CODE = """
from online_learning.model import TwoTower
print(TwoTower(users=30, items=40, categories=8, dim=8, category_dim=4, hidden=16, temperature=0.1, seed=11)
      .dense_checksum())
"""


def test_checksum_is_stable_across_processes_and_sensitive_to_weights() -> None:
    before = torch.random.get_rng_state()
    model = small_model(seed=11)
    assert torch.equal(torch.random.get_rng_state(), before)  # init uses its own generator only
    run = subprocess.run([sys.executable, "-c", CHECKSUM_CODE], cwd=ROOT, capture_output=True, text=True, check=True)
    twin = small_model(seed=11)
    assert run.stdout.strip() == model.dense_checksum() == twin.dense_checksum()
    pairs = zip(model.embedding_parameters(), twin.embedding_parameters(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    with torch.no_grad():
        model.item_tower.fc2.bias[0] += 1e-3
    assert model.dense_checksum() != run.stdout.strip()


def test_batch_from_lists() -> None:
    b = Batch.from_lists([1, 2, 3], [[5, 6], [], [7]], np.array([1, 2, 3]), [0, 0, 1], [9, 8, 9], np.zeros(3))
    assert b.hist_rows.tolist() == [5, 6, 7] and b.hist_offsets.tolist() == [0, 2, 2] and len(b) == 3
    assert b.user_rows.dtype == torch.int64 and b.log_q.dtype == torch.float32
    assert Batch.from_lists([1], [[]], [1], [1], [1], [0.0]).hist_rows.shape == (0,)
    with pytest.raises(ValueError, match="rows"):
        Batch.from_lists([1, 2], [[], []], [1], [1, 1], [1, 1], [0.0, 0.0])
    with pytest.raises(ValueError, match="at least one"):
        Batch.from_lists([], [], [], [], [], [])
    with pytest.raises(ValueError, match="hist_offsets"):
        Batch(torch.tensor([1, 2]), torch.tensor([3]), torch.tensor([0, 2]), torch.tensor([1, 2]),
              torch.tensor([1, 1]), torch.tensor([1, 2]), torch.zeros(2))


def test_loss_decreases_when_users_prefer_a_cluster() -> None:
    """8 clusters of 3 items (category = cluster); each user clicks items of its own cluster and its history
    holds some of them. The best loss is about log(distinct same-cluster items in a batch) ≈ 1."""
    clusters, per = 8, 3
    model = TwoTower(users=65, items=1 + clusters * per, categories=1 + clusters, dim=16, category_dim=8,
                     hidden=32, temperature=0.1, seed=0)
    opt = full_optimizer(model, lr=0.05, dense_lr=1e-2)
    rng = random.Random(0)

    def pick(c: int) -> int:
        return 1 + c * per + rng.randrange(per)

    losses = []
    for _ in range(300):
        users = [rng.randrange(1, 65) for _ in range(32)]
        items = [pick(u % clusters) for u in users]
        batch = Batch.from_lists(users, [[pick(u % clusters) for _ in range(3)] for u in users], items,
                                 [1 + (i - 1) // per for i in items], items, [math.log(1 / (clusters * per))] * 32)
        losses.append(train_step(model, opt, batch))
    start, end = sum(losses[:10]) / 10, sum(losses[-20:]) / 20
    assert all(math.isfinite(x) for x in losses)
    assert end < 0.8 * start, (start, end)


def test_row_adagrad_matches_torch_adagrad() -> None:
    """RowAdagrad is an implementation detail: the same rows, the same values as torch.optim.Adagrad. Five
    training steps feed each step's float32 rounding into the next forward pass, so the tables agree to
    ~1e-6 (a repeated row's gradients are summed in another order than torch's coalesce sums them)."""
    from online_learning.model import RowAdagrad

    mine, theirs = TwoTower(50, 80, 6, seed=3), TwoTower(50, 80, 6, seed=3)
    for m in (mine, theirs):
        m.freeze_dense()
    opts = (RowAdagrad(mine.embedding_parameters(), lr=0.1),
            torch.optim.Adagrad(theirs.embedding_parameters(), lr=0.1))
    rng = np.random.default_rng(4)
    for _ in range(5):
        b = Batch.from_lists(rng.integers(0, 50, 16), [rng.integers(0, 80, 5) for _ in range(16)],
                             rng.integers(0, 80, 16), rng.integers(0, 6, 16), rng.integers(0, 40, 16),
                             np.full(16, -3.0))
        for model, opt in zip((mine, theirs), opts, strict=True):
            train_step(model, opt, b)  # type: ignore[arg-type]
    for a, b_ in zip(mine.embedding_parameters(), theirs.embedding_parameters(), strict=True):
        torch.testing.assert_close(a, b_, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("repeats", [False, True])
def test_row_adagrad_steps_equal_torch_adagrad_on_the_same_gradients(repeats: bool) -> None:
    """Given the same sparse gradients, RowAdagrad's rows equal torch.optim.Adagrad's bit for bit when no
    row repeats, and to the last float32 bit when rows repeat; the rows no gradient names never move."""
    from online_learning.model import RowAdagrad

    rng = np.random.default_rng(7)
    start = torch.randn(40, 6, generator=torch.Generator().manual_seed(1))
    mine, theirs = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    opts = (RowAdagrad([mine], lr=0.1), torch.optim.Adagrad([theirs], lr=0.1))
    touched: set[int] = set()
    for _ in range(6):
        rows = rng.integers(0, 30, 50) if repeats else rng.permutation(30)[:20]
        values = torch.from_numpy(rng.standard_normal((len(rows), 6)).astype(np.float32))
        touched |= set(rows.tolist())
        for p, opt in zip((mine, theirs), opts, strict=True):
            p.grad = torch.sparse_coo_tensor(torch.from_numpy(rows).unsqueeze(0), values, (40, 6))
            opt.step()
    if repeats:
        torch.testing.assert_close(mine, theirs, rtol=1e-6, atol=2.5e-7)
    else:
        assert torch.equal(mine, theirs)
    untouched = sorted(set(range(40)) - touched)
    assert torch.equal(mine.detach()[untouched], start[untouched])


def test_adagrad_rows_refuses_rows_outside_the_table() -> None:
    from online_learning.adagrad_rows import adagrad_rows

    w, acc, slots = np.zeros((3, 2), np.float32), np.zeros((3, 2), np.float32), np.full(3, -1, np.int64)
    with pytest.raises(ValueError, match=r"rows must lie in 0..2, got 0..3"):
        adagrad_rows(w, acc, np.array([0, 3]), np.ones((2, 2), np.float32), 0.1, 1e-10, slots)
    assert not w.any() and not acc.any()
