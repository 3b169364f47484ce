"""Full checkpoints on disk: one file per model version, ``<home>/models/<version>.pt``.

A checkpoint holds everything a :class:`~online_learning.learner.Learner` needs to continue: the
model's parameters (towers and tables), the tables' Adagrad accumulators (so a restarted chain does not
take full-size first steps again), the id tables, the streaming click counts (logQ) and the items'
categories. The towers' Adam state is not kept: each full update starts it afresh.

A full update writes one for the version it creates; the incremental trainer starts from
the current version's checkpoint and overlays the rows published since (they are in Redis). Files are
written to a temporary name and renamed, so a crash never leaves half a checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from infra.errors import ModelError
from infra.settings import LearningSettings, Settings
from online_learning.learner import Learner, Tables
from online_learning.model import TwoTower

__all__ = ["checkpoint_path", "load_checkpoint", "save_checkpoint"]

FORMAT = 1


def checkpoint_path(settings: Settings, version: str) -> Path:
    """Where the checkpoint of ``version`` lives."""
    return settings.home / "models" / f"{version}.pt"


def save_checkpoint(path: Path, learner: Learner, meta: dict[str, Any]) -> None:
    """Write ``learner`` (and ``meta``: version, model id, day…) to ``path`` atomically."""
    m = learner.model
    blob = {"format": FORMAT, "meta": meta, "dims": [m.dim, m.category_dim, m.hidden, m.temperature],
            "model": m.state_dict(), "tables": learner.tables.snapshot(),
            "item_clicks": torch.from_numpy(np.asarray(learner.item_clicks, np.float64)),
            "item_category": {str(k): str(v) for k, v in learner.item_category.items()},
            "trained": int(learner.trained), "newest_ts": int(learner.newest_ts),
            "accumulators": learner.sparse_optimizer().state_dict()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(blob, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, cfg: LearningSettings, *, full: bool = False) -> tuple[Learner, dict[str, Any]]:
    """The learner saved at ``path`` (incremental mode unless ``full``) and its meta."""
    if not path.exists():
        msg = f"model checkpoint {path} is missing; run `recstream full-update` to create a version"
        raise ModelError(msg)
    try:
        blob = torch.load(path, weights_only=True)  # tensors and plain containers only: never unpickle code
    except Exception as exc:  # a truncated or foreign file: one clear line
        msg = f"model checkpoint {path} is unreadable ({type(exc).__name__}: {exc})"
        raise ModelError(msg) from None
    if blob.get("format") != FORMAT:
        msg = f"model checkpoint {path} has format {blob.get('format')}, expected {FORMAT}"
        raise ModelError(msg)
    tables = Tables.restore(blob["tables"])
    dim, category_dim, hidden, temperature = blob["dims"]
    model = TwoTower(tables.users.size, tables.items.size, tables.categories.size, dim, category_dim,
                     hidden, temperature)
    model.load_state_dict(blob["model"])
    learner = Learner(model, tables, cfg, full=full, item_clicks=blob["item_clicks"].numpy().astype(np.float64))
    learner.item_category = dict(blob["item_category"])
    learner.trained = int(blob["trained"])
    learner.newest_ts = int(blob["newest_ts"])
    learner.sparse_optimizer().load_state_dict(blob["accumulators"])
    return learner, dict(blob["meta"])
