"""``recstream canary``: end-to-end freshness probes, per partition and feature family.

Every ``interval`` seconds, for each partition of the events topic, the canary produces one click of that
partition's canary user (``__canary__.<p>.<k>``, placed by the same murmur2 partitioner as every user;
:data:`filters.events.CANARY_PREFIX`) and polls the serving client until the click is readable:

- ``last_n``: the click, by its event id, is the newest entry of the user's click sequence;
- ``stats``: the user's 1h click count includes it.

Each delay (produce → readable) goes into ``recstream_canary_freshness_seconds{family}``. Canary users get
features like any user (a handful of keys per partition) but the label join never samples them, so the
trainer never sees them. A canary that is not readable within ``timeout`` is counted as a miss
(``recstream_canary_misses_total{family}``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from filters.events import CANARY_PREFIX, Event
from infra import metrics
from infra.settings import Settings
from serving.client import FeatureClient
from stream.batching import KeyPartitioner
from stream.producer import EventProducer

__all__ = ["Canary", "canary_users"]


def canary_users(partitions: int) -> dict[int, str]:
    """One canary user id per partition (the first ``__canary__.<p>.<k>`` that the partitioner places on
    ``p``).

    >>> users = canary_users(4)
    >>> sorted(users), all(u.startswith("__canary__.") for u in users.values())
    ([0, 1, 2, 3], True)
    """
    place = KeyPartitioner(partitions)
    out: dict[int, str] = {}
    for p in range(partitions):
        k = 0
        while place(f"{CANARY_PREFIX}.{p}.{k}") != p:
            k += 1
        out[p] = f"{CANARY_PREFIX}.{p}.{k}"
    return out


class Canary:
    """Probes every partition once per :meth:`round`."""

    def __init__(self, settings: Settings, client: FeatureClient, timeout_s: float = 30.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings, self.client, self.timeout_s, self.clock = settings, client, timeout_s, clock
        self.users = canary_users(settings.kafka.partitions)
        self._seq = int(clock() * 1000)

    def _clicks_1h(self, user: str) -> float:
        return float(self.client.stats("user", user, windows=["1h"], actions=["click"])["1h"]["click"])

    def round(self, producer: EventProducer) -> dict[str, list[float]]:
        """Produce one canary click per partition and wait until each family reads it; the delays."""
        before = {user: self._clicks_1h(user) for user in self.users.values()}
        sent: dict[str, tuple[str, float]] = {}
        for user in self.users.values():
            self._seq += 1
            event_id = f"{CANARY_PREFIX}.e{self._seq}"
            now = self.clock()
            producer.send(Event(event_id=event_id, type="click", user_id=user, item_id=f"{CANARY_PREFIX}.item",
                                ts=int(now * 1000)))
            sent[user] = (event_id, now)
        producer.flush(10)
        return self._wait(sent, before)

    def _wait(self, sent: dict[str, tuple[str, float]], before: dict[str, float]) -> dict[str, list[float]]:
        pending = {(user, family) for user in sent for family in ("last_n", "stats")}
        delays: dict[str, list[float]] = {"last_n": [], "stats": []}
        deadline = self.clock() + self.timeout_s
        while pending and self.clock() < deadline:
            for user, family in sorted(pending):
                event_id, at = sent[user]
                if family == "last_n":
                    newest = self.client.last_n(user, "click", 1)
                    done = bool(newest) and newest[0].event_id == event_id
                else:
                    done = self._clicks_1h(user) > before[user]
                if done:
                    delay = self.clock() - at
                    delays[family].append(delay)
                    metrics.CANARY_FRESHNESS.labels(family=family).observe(delay)
                    pending.discard((user, family))
            time.sleep(0.02)
        for _user, family in pending:
            metrics.CANARY_MISSES.labels(family=family).inc()
        return delays
