"""How soon a click reaches serving: click produced → the user's published embedding changed.

A worker and a trainer run as processes on live background traffic (``bench.join_bench``'s producer at
``rate`` events/s). Probe users (``probe-<k>``, outside the background population, so only the probe
changes their rows) first get a few clicks and wait until their own embedding row is published; then,
one probe at a time: read ``user_embedding``, produce an impression and its click (event ts = now),
poll ``user_embedding`` every 20 ms until it differs. The path measured: producer → worker (features,
label join) → samples topic → trainer (buffer, train, publish every ``learning.publish_every_s``) → Redis.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

from bench.join_bench import _produce as background_traffic
from filters.events import Event
from infra.settings import Settings
from serving.client import FeatureClient
from stream.producer import EventProducer
from stream.worker_process import WorkerProcess

__all__ = ["click_to_embedding"]


def _click(producer: EventProducer, user: str, item: str, tag: str) -> float:
    now = int(time.time() * 1000)
    producer.send(Event(event_id=f"imp-{tag}", type="impression", user_id=user, item_id=item, ts=now,
                        request_id=f"r-{tag}", position=0))
    producer.send(Event(event_id=f"clk-{tag}", type="click", user_id=user, item_id=item, ts=now + 1,
                        request_id=f"r-{tag}"))
    producer.flush(10)
    return time.time()


def _changed(client: FeatureClient, user: str, before: np.ndarray, timeout_s: float) -> float | None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if not np.array_equal(client.user_embedding(user), before):
            return time.time()
        time.sleep(0.02)
    return None


def _warm(client: FeatureClient, producer: EventProducer, users: list[str]) -> None:
    """Give each probe user its own published row (admission needs ``learning.min_count`` clicks)."""
    for k in range(3):
        for user in users:
            _click(producer, user, f"warm-{k}", f"{user}-w{k}")
    for user in users:
        default = client.user_embedding(f"never-{user}")
        deadline = time.time() + 60
        while np.array_equal(client.user_embedding(user), default) and time.time() < deadline:
            time.sleep(0.2)


def click_to_embedding(settings: Settings, rate: float, probes: int) -> dict[str, Any]:
    """Latency (s) from a probe's click to its changed ``user_embedding``, p50 / p99 over ``probes``."""
    stop = threading.Event()
    traffic = threading.Thread(target=background_traffic, daemon=True, args=(
        settings, {"rate": rate, "seconds": 3600.0, "users": 2000, "click_share": 0.1}, stop))
    users = [f"probe-{k}" for k in range(probes)]
    took: list[float] = []
    missed = 0
    with WorkerProcess(settings), WorkerProcess(settings, args=("trainer",)):
        traffic.start()
        time.sleep(5.0)  # the trainer's first version exists once serving can read one
        client = FeatureClient(settings=settings)
        with EventProducer(settings) as producer:
            _warm(client, producer, users)
            for k, user in enumerate(users):
                before = client.user_embedding(user).copy()
                clicked = _click(producer, user, f"fresh-{k}", f"{user}-m")
                seen = _changed(client, user, before, 30.0)
                if seen is None:
                    missed += 1
                else:
                    took.append(seen - clicked)
        stop.set()
        traffic.join(10)
        client.close()
    ordered = sorted(took) or [float("nan")]
    return {"rate": rate, "n": len(took), "missed": missed, "period_s": settings.learning.publish_every_s,
            "p50_s": ordered[len(ordered) // 2], "p99_s": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
            "latencies_s": took}
