"""``recstream full-update``: the nightly full update — one day of samples, shuffled, one epoch, the whole
network, starting from the current version's full checkpoint; published as a new version.

The day is a UTC calendar day of event time (a positive's ``ts``). Samples come from a
``recstream samples export`` file or from the samples topic (every retained record is read and filtered
by ``ts``, so it works for replays of old days too; retention must cover the day). Duplicates are
dropped by ``sample_id``. The update is idempotent: a kept version already made from the same day
(model id ``full-<day>``) is reported and nothing is trained, unless ``force``.

>>> day_bounds("2026-11-30")
(1795996800000, 1796083200000)
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable, Iterable
from pathlib import Path

import msgspec

from filters.labels import Sample
from filters.manifest import Manifest
from filters.model_store import ModelStore
from filters.sample_records import decode_samples
from infra.errors import InputError
from infra.settings import Settings
from online_learning.checkpoint import checkpoint_path, load_checkpoint
from online_learning.versions import ensure_version, publish_full

__all__ = ["day_bounds", "positives_of_day", "read_day", "run_full_update"]

MS_PER_DAY = 86_400_000


def day_bounds(day: str) -> tuple[int, int]:
    """``[start, end)`` epoch ms of a UTC day ``YYYY-MM-DD`` (one :class:`InputError` line if malformed)."""
    try:
        start = dt.datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=dt.UTC)
    except ValueError:
        msg = f"--day must be YYYY-MM-DD, got {day!r}"
        raise InputError(msg) from None
    ms = int(start.timestamp() * 1000)
    return ms, ms + MS_PER_DAY


def positives_of_day(values: Iterable[bytes], start_ms: int, end_ms: int) -> tuple[list[Sample], int]:
    """Distinct positives with ``start_ms <= ts < end_ms`` in ``values`` (JSON records), and how many
    values were not valid samples."""
    seen: set[str] = set()
    out: list[Sample] = []
    bad = 0
    for raw in values:
        try:
            samples = decode_samples(raw)
        except msgspec.DecodeError:
            bad += 1
            continue
        for s in samples:
            if s.kind == "positive" and start_ms <= s.ts < end_ms and s.sample_id not in seen:
                seen.add(s.sample_id)
                out.append(s)
    return out, bad


def read_day(settings: Settings, day: str, source: Path | None) -> tuple[list[Sample], int]:
    """The day's distinct positives from ``source`` (JSONL) or, without it, from the samples topic."""
    start, end = day_bounds(day)
    if source is not None:
        if not source.is_file():
            msg = f"samples file {source} not found"
            raise InputError(msg)
        with source.open("rb") as lines:
            return positives_of_day((line for line in lines if line.strip()), start, end)
    from infra.topic_reader import read_between

    now = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
    records = read_between(settings, settings.kafka.samples_topic, 0, now + 1)
    return positives_of_day((r.value for r in records if r.value is not None), start, end)


def run_full_update(settings: Settings, store: ModelStore, day: str, samples: list[Sample], *,
                    force: bool = False, progress: Callable[[int], None] | None = None) -> Manifest | None:
    """Train one shuffled epoch over ``samples`` from the current version's checkpoint and publish the
    result as a new version; None (nothing done) when a kept version was made from ``day`` already."""
    model_id = f"full-{day}"
    parent = ensure_version(settings, store)
    done = [v for v in store.versions() if store.manifest(v).model_id == model_id]
    if done and not force:
        return None
    learner, _ = load_checkpoint(checkpoint_path(settings, parent), settings.learning, full=True)
    order = list(samples)
    random.Random(f"{settings.learning.seed}:{day}").shuffle(order)
    size = settings.learning.batch_size
    for start in range(0, len(order), size):
        learner.train(order[start:start + size])
        if progress is not None:
            progress(len(order[start:start + size]))
    learner.model.freeze_dense()
    return publish_full(settings, store, learner, model_id, parent)
