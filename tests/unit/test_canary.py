"""The canary's exposure probes on fakes of our own interfaces (a feature client whose exposure filter is a
set, a producer that delivers into it or drops): a restarted canary finds an unseen pool item at once, a
probe that never becomes readable is a miss, and a round with nothing left to probe is no miss."""

from __future__ import annotations

from collections.abc import Iterable

from filters.events import CANARY_PREFIX, Event
from infra.settings import Settings
from recstream.canary import Canary, canary_users

PARTITIONS = 4


class FakeClient:
    """``FeatureClient.seen`` over a set of (user, item) pairs."""

    redis = None

    def __init__(self) -> None:
        self.shown: set[tuple[str, str]] = set()

    def seen(self, user_id: str, ids: Iterable[str]) -> list[bool]:
        return [(user_id, i) in self.shown for i in ids]


class FakeProducer:
    """Delivers impressions straight into the fake client's filter, or drops them (``deliver=False``)."""

    def __init__(self, client: FakeClient, deliver: bool = True) -> None:
        self.client, self.deliver, self.sent = client, deliver, list[Event]()

    def send(self, event: Event) -> None:
        self.sent.append(event)
        if self.deliver and event.type == "impression":
            self.client.shown.add((event.user_id, event.item_id))

    def flush(self, timeout: float) -> None:
        return None


class Ticks:
    """A clock that moves 10 ms each time it is read (the canary's deadline comes without sleeping)."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        self.now += 0.01
        return self.now


def _canary(client: FakeClient, timeout_s: float = 1.0) -> Canary:
    settings = Settings(kafka={"partitions": PARTITIONS})
    return Canary(settings, client, timeout_s=timeout_s, families=("exposure",),  # type: ignore[arg-type]
                  clock=Ticks())


def _epoch_users(canary: Canary) -> dict[int, str]:
    return canary_users(PARTITIONS, tag=f"x{int(1_000_000.0 // canary.epoch_s)}.")


def test_a_restarted_canary_probes_every_partition_in_its_first_round() -> None:
    client = FakeClient()
    first = _canary(client)
    for user in _epoch_users(first).values():  # its predecessor impressed the pool's first 40 items
        client.shown |= {(user, f"{CANARY_PREFIX}.i{k}") for k in range(40)}
    producer = FakeProducer(client)
    got = first.round(producer)  # type: ignore[arg-type]
    assert len(got.delays["exposure"]) == PARTITIONS and got.missed == {"exposure": 0}
    assert {e.item_id for e in producer.sent if e.type == "impression"} == {f"{CANARY_PREFIX}.i40"}
    again = first.round(producer)  # type: ignore[arg-type]
    assert len(again.delays["exposure"]) == PARTITIONS
    assert {e.item_id for e in producer.sent[-2 * PARTITIONS:] if e.type == "impression"} == {f"{CANARY_PREFIX}.i41"}


def test_a_probe_never_readable_is_a_miss() -> None:
    client = FakeClient()
    got = _canary(client, timeout_s=0.5).round(FakeProducer(client, deliver=False))  # type: ignore[arg-type]
    assert got.delays["exposure"] == [] and got.missed == {"exposure": PARTITIONS}


def test_a_round_with_every_item_checked_already_seen_sends_no_probe_and_misses_nothing() -> None:
    client = FakeClient()
    canary = _canary(client)
    for user in _epoch_users(canary).values():
        client.shown |= {(user, f"{CANARY_PREFIX}.i{k}") for k in range(canary.settings.bloom.slice_capacity)}
    producer = FakeProducer(client)
    got = canary.round(producer)  # type: ignore[arg-type]
    assert got.delays["exposure"] == [] and got.missed == {"exposure": 0}
    assert [e.type for e in producer.sent] == ["click"] * PARTITIONS
