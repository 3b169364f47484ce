"""Peer 2 of :mod:`bench.peers_bench`: the same batches through the online trainer's model with its sparse
update (:func:`~online_learning.frozen_step.frozen_step` + :func:`~online_learning.model.incremental_optimizer`:
Adagrad on the touched rows, towers frozen) and through the same model with dense tables and
``torch.optim.Adam`` on every parameter (what a plain ``torch.nn.Embedding`` + Adam trainer does).

Both start from the same weights (same seed) and see the same batches, interleaved step by step. Measured:
samples/s, the optimizer state's bytes, and what a publish after a window of steps has to ship: the table
rows that changed in the window (row checksums before / after) against the whole tables.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from bench.common import BAR
from infra.settings import LearningSettings
from online_learning.frozen_step import frozen_step
from online_learning.model import Batch, TwoTower, incremental_optimizer, train_step

HISTORY = 50
CATEGORIES = 1000
SEED = 4


class DenseTwoTower(TwoTower):
    """The same model with dense tables (``sparse=False`` embeddings and embedding bag)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for table in (self.user_emb, self.item_emb, self.cat_emb):
            table.sparse = False

    def user_vectors(self, user_rows: Tensor, hist_rows: Tensor, hist_offsets: Tensor) -> Tensor:
        """As :meth:`TwoTower.user_vectors`, with a dense gradient of the history mean."""
        mean = F.embedding_bag(hist_rows, self.item_emb.weight, hist_offsets, mode="mean", sparse=False)
        return self.user_tower(torch.cat([self.user_emb(user_rows), mean], dim=1))  # type: ignore[no-any-return]


def make_batches(rows: int, count: int, size: int, seed: int = SEED) -> list[Batch]:
    """``count`` batches of ``size`` positives over ``rows`` users and ``rows`` items (row 0 = shared):
    uniform users, Zipf(1.2) items (folded into the table), histories of 0..50 Zipf items, categories by
    item, logQ by batch share."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        items = (rng.zipf(1.2, size) - 1) % (rows - 1) + 1
        lengths = rng.integers(0, HISTORY + 1, size)
        hist = (rng.zipf(1.2, int(lengths.sum())) - 1) % (rows - 1) + 1
        histories = np.split(hist, np.cumsum(lengths)[:-1])
        _, inverse, counts = np.unique(items, return_inverse=True, return_counts=True)
        out.append(Batch.from_lists(user_rows=rng.integers(1, rows, size), histories=histories, item_rows=items,
                                    cat_rows=items % (CATEGORIES - 1) + 1, item_keys=items,
                                    log_q=np.log(counts[inverse] / size)))
    return out


def state_bytes(state: Any) -> int:
    """Bytes of every tensor in an optimizer's state (nested dicts)."""
    if isinstance(state, Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(state_bytes(v) for v in state.values())
    if isinstance(state, list | tuple):
        return sum(state_bytes(v) for v in state)
    return 0


def row_checksums(model: TwoTower) -> list[Tensor]:
    """One float64 sum per row of the user and the item table (a changed row changes its sum)."""
    with torch.no_grad():
        return [torch.sum(t.weight, dim=1, dtype=torch.float64) for t in (model.user_emb, model.item_emb)]


def _towers(model: TwoTower) -> list[Tensor]:
    return [p.detach().clone() for p in model.dense_parameters()]


class Side:
    """One model + optimizer, its step times and losses."""

    def __init__(self, model: TwoTower, optimizer: Any, step: Any = train_step) -> None:
        self.model, self.optimizer, self._step = model, optimizer, step
        self.seconds, self.losses, self.samples = 0.0, list[float](), 0

    def step(self, batch: Batch, timed: bool) -> None:
        started = time.perf_counter()
        self.losses.append(self._step(self.model, cast(Any, self.optimizer), batch))
        if timed:
            self.seconds += time.perf_counter() - started
            self.samples += len(batch)


def _sides(rows: int, cfg: LearningSettings) -> dict[str, Side]:
    sizes = {"users": rows, "items": rows, "categories": CATEGORIES, "dim": cfg.dim,
             "category_dim": cfg.category_dim, "hidden": cfg.hidden, "seed": SEED}
    ours = TwoTower(**sizes)
    ours.freeze_dense()
    dense = DenseTwoTower(**sizes)
    return {"recstream sparse Adagrad (rows touched)": Side(ours, incremental_optimizer(ours, cfg.lr), frozen_step),
            "dense tables + torch.optim.Adam (all parameters)": Side(dense, torch.optim.Adam(dense.parameters(),
                                                                                             lr=cfg.dense_lr))}


def run_size(rows: int, steps: int, cfg: LearningSettings, warmup: int = 2) -> dict[str, Any]:
    """``warmup`` + ``steps`` interleaved steps per side; the publish window is the last half of the steps."""
    batches = make_batches(rows, warmup + steps, cfg.batch_size)
    sides = _sides(rows, cfg)
    window_start = warmup + steps - steps // 2
    marks: dict[str, tuple[list[Tensor], list[Tensor]]] = {}
    for k, batch in enumerate(tqdm(batches, desc=f"learning {rows:,} rows", **BAR)):
        if k == window_start:
            marks = {name: (row_checksums(s.model), _towers(s.model)) for name, s in sides.items()}
        names = list(sides) if k % 2 == 0 else list(sides)[::-1]
        for name in names:
            sides[name].step(batch, timed=k >= warmup)
    window = batches[window_start:]
    touched = {"users": torch.unique(torch.cat([b.user_rows for b in window])).numel(),
               "items": torch.unique(torch.cat([t for b in window for t in (b.item_rows, b.hist_rows)])).numel()}
    out: dict[str, Any] = {"rows": rows, "steps": steps, "batch": cfg.batch_size, "window_steps": len(window),
                           "rows_in_window_batches": touched, "sides": {}}
    row_bytes = cfg.dim * 4
    for name, s in sides.items():
        sums, towers = marks[name]
        changed = [int((a != b).sum()) for a, b in zip(sums, row_checksums(s.model), strict=True)]
        towers_changed = any(not torch.equal(a, b) for a, b in zip(towers, _towers(s.model), strict=True))
        tower_bytes = sum(t.numel() * 4 for t in towers) if towers_changed else 0
        out["sides"][name] = {
            "samples_per_s": s.samples / s.seconds, "first_loss": s.losses[0], "last_loss": s.losses[-1],
            "optimizer_state_bytes": state_bytes(s.optimizer.state_dict()),
            "rows_changed_in_window": {"users": changed[0], "items": changed[1]},
            "publish_bytes": (changed[0] + changed[1]) * row_bytes + tower_bytes,
            "towers_changed": towers_changed,
        }
    out["whole_tables_bytes"] = 2 * rows * row_bytes
    return out


def run_learning(sizes: Sequence[int], steps: int, cfg: LearningSettings | None = None) -> dict[str, Any]:
    """:func:`run_size` for each table size (users = items = ``rows``), one after the other."""
    torch.manual_seed(0)
    cfg = cfg or LearningSettings()
    return {str(rows): run_size(rows, steps, cfg) for rows in sizes}
