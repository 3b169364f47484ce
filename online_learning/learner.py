"""The trainer's model state, without IO: a two-tower model, its ID tables, the optimizer, logQ counts.

:class:`Learner` turns decoded samples into training steps and evaluation, prequentially (test, then
train): :meth:`Learner.evaluate` scores a batch with the model as it stands, :meth:`Learner.train`
trains on its positives. Incremental mode (``full=False``) freezes the towers and trains only the ID
embeddings with sparse Adagrad; full mode (the nightly update) trains the whole network.

- Rows: users, items and categories get their own rows through :class:`~online_learning.vocab.IdTable`
  (admission after ``learning.min_count`` occurrences, idle eviction by event time, a row cap). A newly
  admitted row starts from a small random vector seeded by its id (:func:`initial_rows`), with a fresh
  Adagrad accumulator.
- logQ: ``log_q[j]`` is the log share of item ``j``'s row among all trained positives so far (streaming
  click counts, this batch included) — popular items are sampled as in-batch negatives more often and
  their logits are corrected by it.
- Collisions: two positives of one item id in a batch are not each other's negatives (keys = the item
  id's 64-bit hash, so distinct items sharing the default row stay negatives of each other).
- Evaluation ranks each positive's item among the published item catalogue (every item with an own row,
  its vector as of the last :meth:`Learner.refresh_catalogue`); an item outside it is a miss.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from operator import itemgetter
from typing import Any

import numpy as np
import torch

from filters.labels import Sample
from infra.keys import shard_of
from infra.settings import LearningSettings
from online_learning.dedup import id_hash
from online_learning.evaluation import rank_of_targets
from online_learning.frozen_step import frozen_step
from online_learning.model import (
    Batch,
    FullOptimizer,
    RowAdagrad,
    TwoTower,
    full_optimizer,
    incremental_optimizer,
    train_step,
)
from online_learning.publish import Family, Rows
from online_learning.vocab import IdTable

__all__ = ["Learner", "Tables"]


NO_CATEGORY = ""
INIT_STD = 0.05  # as the model's initial tables


@dataclass
class Tables:
    """The id tables of one model: users, items, categories."""

    users: IdTable
    items: IdTable
    categories: IdTable

    @classmethod
    def empty(cls, cfg: LearningSettings) -> Tables:
        return cls(IdTable(cfg.max_users, cfg.min_count, cfg.idle_evict_ms),
                   IdTable(cfg.max_items, cfg.min_count, cfg.idle_evict_ms),
                   IdTable(cfg.max_categories, 1, cfg.idle_evict_ms))

    def snapshot(self) -> dict[str, Any]:
        return {"users": self.users.snapshot(), "items": self.items.snapshot(),
                "categories": self.categories.snapshot()}

    @classmethod
    def restore(cls, snap: dict[str, Any]) -> Tables:
        return cls(IdTable.restore(snap["users"]), IdTable.restore(snap["items"]),
                   IdTable.restore(snap["categories"]))


_GOLDEN = np.uint64(0x9E37_79B9_7F4A_7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's output function, elementwise on uint64 (wrapping arithmetic): a counter -> 64 random bits."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58_476D_1CE4_E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D0_49BB_1331_11EB)
    out: np.ndarray = x ^ (x >> np.uint64(31))
    return out


def initial_rows(ids: Sequence[str], width: int, seed: int) -> np.ndarray:
    """The first embedding of each newly admitted id: normal(0, INIT_STD), a function of the id's hash and
    ``seed`` alone — so a replay admits the same rows with the same values. Vectorised: SplitMix64 over
    counters ``hash(id) ^ seed·φ + j·φ`` gives the uniforms, Box–Muller the normals (one numpy pass for
    all ids; a generator per id cost ~10 µs each, a third of a training step with many admissions).

    Not a copy of the shared row 0: row 0 trains on every click of every id without its own row, so it
    drifts towards "popular with everyone", and copies of it would enter the catalogue near the top of
    every user's ranking.

    >>> a, b = initial_rows(["i1", "i2"], 4, seed=7), initial_rows(["i2"], 4, seed=7)
    >>> a.shape, a.dtype, bool((a[1] == b[0]).all()), bool((a[0] == a[1]).all())
    ((2, 4), dtype('float32'), True, False)
    >>> big = initial_rows([f"u{k}" for k in range(4000)], 32, seed=1)
    >>> bool(abs(big.mean()) < 0.002), bool(abs(big.std() - INIT_STD) < 0.002)
    (True, True)
    """
    half = (width + 1) // 2
    hashes = np.fromiter((id_hash(k) for k in ids), np.int64, len(ids)).view(np.uint64)
    with np.errstate(over="ignore"):
        start = hashes ^ (np.uint64(seed & 0xFFFF_FFFF_FFFF_FFFF) * _GOLDEN)
        bits = _splitmix64(start[:, None] + np.arange(1, 2 * half + 1, dtype=np.uint64)[None, :] * _GOLDEN)
    unit = (bits >> np.uint64(11)).astype(np.float64) * 2.0 ** -53  # [0, 1)
    radius = np.sqrt(-2.0 * np.log1p(-unit[:, :half]))  # 1 - u in (0, 1]: log is finite
    angle = 2.0 * np.pi * unit[:, half:]
    normals = np.concatenate([radius * np.cos(angle), radius * np.sin(angle)], axis=1)[:, :width]
    return (normals * INIT_STD).astype(np.float32)


class Learner:
    """One model being trained (incrementally, or fully with ``full=True``)."""

    def __init__(self, model: TwoTower, tables: Tables, cfg: LearningSettings, *, full: bool = False,
                 item_clicks: np.ndarray | None = None, shards: int = 64) -> None:
        self.model, self.tables, self.cfg, self.full, self.shards = model, tables, cfg, full, shards
        if full:
            model.unfreeze_dense()
            self.optimizer: RowAdagrad | FullOptimizer = full_optimizer(model, cfg.lr, cfg.dense_lr)
        else:
            model.freeze_dense()
            self.optimizer = incremental_optimizer(model, cfg.lr)
        self.item_clicks = item_clicks if item_clicks is not None else np.zeros(tables.items.size, np.float64)
        self.item_category: dict[str, str] = {}  # category last seen per item id with an own row
        # row -> Redis shard of the id holding it (filled at admission; publishing skips re-hashing ids)
        self.row_shard = {"users": np.zeros(tables.users.size, np.int64),
                          "items": np.zeros(tables.items.size, np.int64)}
        for name in self.row_shard:
            for key, row in getattr(tables, name).items():
                self.row_shard[name][row] = shard_of(key, shards)
        self.trained = 0
        self.newest_ts = 0  # the newest sample ts trained (event time: eviction, the manifest)
        self.catalogue_ids: list[str] = []
        self.catalogue = np.zeros((0, model.dim), np.float32)
        self._catalogue_index: dict[str, int] = {}

    @classmethod
    def fresh(cls, cfg: LearningSettings, *, full: bool = False) -> Learner:
        """A random-initialised model (``learning.seed``) with empty tables."""
        tables = Tables.empty(cfg)
        model = TwoTower(tables.users.size, tables.items.size, tables.categories.size, cfg.dim,
                         cfg.category_dim, cfg.hidden, cfg.temperature, cfg.seed)
        return cls(model, tables, cfg, full=full)

    # --- evaluation (before training) ----------------------------------------------------------------
    @torch.no_grad()
    def _user_vectors(self, samples: Sequence[Sample]) -> np.ndarray:
        """User tower outputs for a non-empty batch of samples (rows looked up, nothing admitted)."""
        users = torch.as_tensor(self.tables.users.rows([s.user_id for s in samples]), dtype=torch.int64)
        hist_rows, hist_offsets = self._histories(samples)
        return self.model.user_vectors(users, hist_rows, hist_offsets).numpy()

    def _histories(self, samples: Sequence[Sample]) -> tuple[torch.Tensor, torch.Tensor]:
        """Every sample's history item rows, flattened, and where each sample's bag starts (one lookup)."""
        lengths = np.fromiter((len(s.history) for s in samples), np.int64, len(samples))
        rows = self.tables.items.rows(chain.from_iterable(s.history for s in samples))
        offsets = np.zeros(len(samples), np.int64)
        np.cumsum(lengths[:-1], out=offsets[1:])
        return torch.as_tensor(np.asarray(rows, np.int64)), torch.from_numpy(offsets)

    @torch.no_grad()
    def _item_vectors(self, item_ids: Sequence[str], categories: Sequence[str]) -> np.ndarray:
        items = torch.as_tensor(self.tables.items.rows(item_ids), dtype=torch.int64)
        cats = torch.as_tensor(self.tables.categories.rows(categories), dtype=torch.int64)
        return self.model.item_vectors(items, cats).numpy()

    def rank_positives(self, positives: Sequence[Sample]) -> np.ndarray:
        """1-based rank of each positive's item among the catalogue (``len(catalogue) + 1``: a miss)."""
        if not positives:
            return np.zeros(0, np.int64)
        targets = np.array([self._catalogue_index.get(s.item_id, -1) for s in positives], np.int64)
        return rank_of_targets(self._user_vectors(positives), self.catalogue, targets)

    def score_impressions(self, impressions: Sequence[Sample]) -> np.ndarray:
        """Cosine / temperature of each impression's user and item (the model as it stands)."""
        if not impressions:
            return np.zeros(0, np.float32)
        users = self._user_vectors(impressions)
        items = self._item_vectors([s.item_id for s in impressions],
                                   [s.category or NO_CATEGORY for s in impressions])
        out: np.ndarray = np.einsum("ij,ij->i", users, items) / self.model.temperature
        return out

    # --- training ----------------------------------------------------------------------------------
    def train(self, positives: Sequence[Sample]) -> float:
        """One step on a batch of positives; returns the loss (0.0 for an empty batch)."""
        if not positives:
            return 0.0
        ts = max(s.ts for s in positives)
        t = self.tables
        users = t.users.observe([s.user_id for s in positives], ts)
        cats_of = [s.category or NO_CATEGORY for s in positives]
        items = t.items.observe([s.item_id for s in positives], ts)
        cats = t.categories.observe(cats_of, ts)
        for s, cat in zip(positives, cats_of, strict=True):
            self.item_category[s.item_id] = cat
        self._apply_table_changes()
        hist_rows, hist_offsets = self._histories(positives)
        np.add.at(self.item_clicks, items, 1.0)
        log_q = np.log(self.item_clicks[items] / self.item_clicks.sum())
        keys = [id_hash(s.item_id) for s in positives]
        batch = Batch(torch.as_tensor(users, dtype=torch.int64), hist_rows, hist_offsets,
                      torch.as_tensor(items, dtype=torch.int64), torch.as_tensor(cats, dtype=torch.int64),
                      torch.as_tensor(keys, dtype=torch.int64), torch.as_tensor(log_q, dtype=torch.float32))
        opt = self.optimizer  # towers frozen: the analytic step (online_learning.frozen_step), else autograd
        loss = train_step(self.model, opt, batch) if isinstance(opt, FullOptimizer) else \
            frozen_step(self.model, opt, batch)
        self.trained += len(positives)
        self.newest_ts = max(self.newest_ts, ts)
        return loss

    def expire(self, watermark_ms: int) -> None:
        """Free rows idle at the watermark (event time)."""
        for table in (self.tables.users, self.tables.items, self.tables.categories):
            table.expire(watermark_ms)
        self._apply_table_changes()

    def _apply_table_changes(self) -> None:
        """Admitted rows start from :func:`initial_rows`; evicted item rows lose their click count."""
        m = self.model
        for name, table, weight, clicks in (("users", self.tables.users, m.user_emb.weight, None),
                                            ("items", self.tables.items, m.item_emb.weight, self.item_clicks),
                                            ("categories", self.tables.categories, m.cat_emb.weight, None)):
            evicted = table.take_evicted()
            if clicks is not None:
                for key, row in evicted:
                    clicks[row] = 0.0
                    self.item_category.pop(key, None)
            taken = table.take_admitted()
            admitted = [row for _, row in taken]
            shard_of_row = self.row_shard.get(name)
            if shard_of_row is not None:
                for key, row in taken:
                    shard_of_row[row] = shard_of(key, self.shards)
            if admitted:
                with torch.no_grad():
                    weight[admitted] = torch.from_numpy(initial_rows([k for k, _ in taken], weight.shape[1],
                                                                     self.cfg.seed))
                self._reset_accumulators(weight, admitted)

    def sparse_optimizer(self) -> RowAdagrad:
        """The tables' optimizer (in full mode, the sparse half of the full optimizer)."""
        opt = self.optimizer
        return opt.sparse if isinstance(opt, FullOptimizer) else opt

    def _reset_accumulators(self, weight: torch.Tensor, rows: list[int]) -> None:
        state = self.sparse_optimizer().state.get(weight)
        if state is not None:
            state["sum"][rows] = 0.0

    def load_published(self, users: Mapping[str, np.ndarray], items: Mapping[str, np.ndarray], ts: int) -> None:
        """Overlay rows published after the checkpoint (a restart): each id gets its own row (admitted at
        event time ``ts`` if the checkpoint had none) holding the published embedding."""
        m = self.model
        for table, weight, published in ((self.tables.users, m.user_emb.weight, users),
                                         (self.tables.items, m.item_emb.weight, items)):
            ids = [k for k in published if table.assign(k, ts)]
            self._apply_table_changes()
            rows = table.rows(ids)
            if rows:
                with torch.no_grad():
                    weight[rows] = torch.as_tensor(np.stack([published[k] for k in ids]))
        self.newest_ts = max(self.newest_ts, ts)

    # --- publishing --------------------------------------------------------------------------------
    @torch.no_grad()
    def touched_rows(self) -> Rows:
        """The rows touched since the last call (embeddings, and the touched items' vectors)."""
        user_ids, user_rows, user_shards = self._by_shard(self.tables.users.take_touched(), "users")
        item_ids, item_rows, item_shards = self._by_shard(self.tables.items.take_touched(), "items")
        m = self.model
        item_vecs = self._item_vectors(item_ids, [self.item_category.get(i, NO_CATEGORY) for i in item_ids])
        n = self.shards
        return Rows(Family(user_ids, m.user_emb.weight[torch.from_numpy(user_rows)].numpy(), user_shards, n),
                    Family(item_ids, m.item_emb.weight[torch.from_numpy(item_rows)].numpy(), item_shards, n),
                    Family(item_ids, item_vecs, item_shards, n))

    def _by_shard(self, touched: Mapping[str, int], family: str) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Touched ids, their rows and their Redis shards, grouped by shard: the rows are gathered from
        the tables once, in the order the publish writes them."""
        rows = np.fromiter(touched.values(), np.int64, len(touched))
        shards = self.row_shard[family][rows]
        order = np.argsort(shards, kind="stable")
        ids = list(itemgetter(*order.tolist())(list(touched))) if len(touched) > 1 else list(touched)
        return ids, rows[order], shards[order]

    def all_rows(self) -> Rows:
        """Every own row (a complete version)."""
        m = self.model
        users = list(self.tables.users.items())
        items = list(self.tables.items.items())
        item_ids = [k for k, _ in items]
        with torch.no_grad():
            vecs = self._item_vectors(item_ids, [self.item_category.get(i, NO_CATEGORY) for i in item_ids])
            return Rows(Family([k for k, _ in users], m.user_emb.weight[[r for _, r in users]].numpy()),
                        Family(item_ids, m.item_emb.weight[[r for _, r in items]].numpy()),
                        Family(item_ids, vecs))

    def defaults(self) -> dict[str, np.ndarray]:
        """The shared rows: what serving uses for an id without its own row."""
        m = self.model
        return {"user": m.user_emb.weight[0].detach().numpy().copy(),
                "item": m.item_emb.weight[0].detach().numpy().copy()}

    def refresh_catalogue(self) -> None:
        """Recompute the item vectors evaluation ranks against (every item with an own row)."""
        self.catalogue_ids = [k for k, _ in self.tables.items.items()]
        self.catalogue = self._item_vectors(self.catalogue_ids,
                                            [self.item_category.get(i, NO_CATEGORY) for i in self.catalogue_ids])
        self._catalogue_index = {k: i for i, k in enumerate(self.catalogue_ids)}
