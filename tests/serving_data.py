"""A Redis filled by the real ingest stage (exposures, sequences, statistics) plus a published model:
what the serving tests read."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from filters.events import Event, encode_batch
from filters.model_store import ModelStore
from infra.settings import Settings
from online_learning.learner import Learner
from online_learning.versions import publish_full
from stream.batching import KeyPartitioner
from stream.ingest import IngestStage, Record
from stream.worker_process import WorkerProcess
from tests.learning_data import stream

USERS, ITEMS = 12, 150


def _events(now: int) -> list[Event]:
    rng = random.Random(5)
    out = []
    for k in range(3000):
        user, item = f"u{rng.randrange(USERS)}", f"i{rng.randrange(ITEMS)}"
        ts = now - rng.randrange(3 * 86_400_000)
        kind: Any = rng.choice(["impression"] * 6 + ["click", "like", "collect"])
        out.append(Event(event_id=f"e{k}", type=kind, user_id=user, item_id=item, ts=ts))
    return sorted(out, key=lambda e: e.ts)


def populate(base: Settings, client: redis.Redis, home: Path) -> Settings:
    """Feed 3,000 events of the last 3 days through the ingest stage and publish a trained model."""
    settings: Settings = base.model_copy(update={
        "home": home, "join": base.join.model_copy(update={"enabled": False}),
        "learning": base.learning.model_copy(update={"max_users": 100, "max_items": 400, "min_count": 1})})
    place = KeyPartitioner(settings.kafka.partitions)
    parts: dict[int, list[Event]] = {}
    for e in _events(int(time.time() * 1000)):
        parts.setdefault(place(e.user_id), []).append(e)
    stage = IngestStage(client, settings)
    for p, evs in parts.items():
        stage.process([Record(settings.kafka.events_topic, p, 0, None, encode_batch(evs))]).commit()
    train_and_publish(settings, client, seed=9, model_id="full-a", parent=None)
    return settings


def train_and_publish(settings: Settings, client: redis.Redis, seed: int, model_id: str, parent: str | None) -> str:
    """A learner trained on 640 synthetic positives of the same users and items, published; its version."""
    learner = Learner.fresh(settings.learning)
    samples = stream(640, users=USERS, items=ITEMS, seed=seed)
    for k in range(0, 640, 64):
        learner.train(samples[k:k + 64])
    return publish_full(settings, ModelStore(client, settings.redis.shards), learner, model_id, parent).version


def start_serve(settings: Settings, port: int, log: Path) -> WorkerProcess:
    """``recstream serve --port PORT`` as a child process, returned once ``/healthz`` answers."""
    proc = WorkerProcess(settings, log, args=("serve", "--port", str(port))).start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.stop()
    pytest.fail(f"recstream serve did not come up: {log.read_text()[-2000:]}")
