"""Creating and resuming model versions: the glue of checkpoints (disk) and the model store (Redis).

- :func:`publish_full` makes a complete new version from a learner: checkpoint first, then every row,
  the weights and the manifest, then the pointer switch.
- :func:`ensure_version` gives a fresh install its first version (random towers, empty tables, model id
  ``init``), so the trainer and serving always have a current version to work with.
- :func:`resume` is the incremental trainer's start: the current version's checkpoint, then the rows
  published into that version since (they are newer than the checkpoint), and its manifest.
"""

from __future__ import annotations

from filters.manifest import Manifest, next_version
from filters.model_store import ModelStore
from infra.clock import Clock, now_ms
from infra.errors import ModelError
from infra.settings import Settings
from online_learning.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from online_learning.learner import Learner
from online_learning.publish import ModelPublisher

__all__ = ["ensure_version", "publish_full", "resume"]


def publish_full(settings: Settings, store: ModelStore, learner: Learner, model_id: str,
                 parent: str | None, clock: Clock = now_ms) -> Manifest:
    """Checkpoint ``learner`` as a new version, publish it completely and make it current."""
    kept = store.versions()
    version = next_version(max(kept) if kept else None)
    learner.refresh_catalogue()
    rows = learner.all_rows()
    m = learner.model
    manifest = Manifest(version=version, model_id=model_id, dense_checksum=m.dense_checksum(), dim=m.dim,
                        category_dim=m.category_dim, hidden=m.hidden, temperature=m.temperature,
                        created_ms=clock(), parent=parent, last_publish_ms=clock(), publishes=1,
                        samples_seen=learner.trained, newest_event_ms=learner.newest_ts, user_rows=len(rows.users.ids),
                        item_rows=len(rows.items.ids))
    save_checkpoint(checkpoint_path(settings, version), learner, {"version": version, "model_id": model_id,
                                                                  "parent": parent})
    ModelPublisher(store, settings.learning.keep_versions).create_version(
        manifest, m.export_weights(), learner.defaults(), rows)
    return manifest


def ensure_version(settings: Settings, store: ModelStore) -> str:
    """The current version, creating the first one (random towers, model id ``init``) if there is none."""
    current = store.current()
    if current is not None:
        return current
    return publish_full(settings, store, Learner.fresh(settings.learning), "init", None).version


def resume(settings: Settings, store: ModelStore, version: str) -> tuple[Learner, Manifest]:
    """The incremental learner of ``version``: its checkpoint plus the rows published into it since."""
    manifest = store.manifest(version)
    learner, _ = load_checkpoint(checkpoint_path(settings, version), settings.learning)
    if learner.model.dense_checksum() != manifest.dense_checksum:
        msg = f"checkpoint of {version} does not match its manifest's dense checksum"
        raise ModelError(msg)
    learner.trained = manifest.samples_seen
    overlay = {"user": store.all_rows("user", version), "item": store.all_rows("item", version)}
    learner.load_published(overlay["user"], overlay["item"], manifest.newest_event_ms)
    learner.refresh_catalogue()
    return learner, manifest
