"""The pure label join (filters.labels) against the brute-force reference, whatever the batch cuts."""

from __future__ import annotations

import random

import msgspec
import pytest

from filters.events import Event
from filters.labels import Arrival, JoinConfig, JoinOutput, PartitionJoin, UserJoin, calibrate, keeps
from tests.join_reference import JEv, Params, join_partition, random_stream, record

M = 60_000
WINDOWS = {"click": 10 * M, "like": 30 * M, "collect": 30 * M, "share": 20 * M, "comment": 30 * M}


def run_join(events: list[JEv], cfg: JoinConfig, lateness: int, rng: random.Random,
             checkpoint: bool = False) -> dict[str, dict[str, object]]:
    """Through PartitionJoin in random batches (optionally reloaded from a msgpack checkpoint between
    batches, as a restarted worker does); first deliveries only, watermark before each event."""
    join, out, seen, top, at = PartitionJoin(cfg), JoinOutput(), set(), None, 0
    samples: dict[str, dict[str, object]] = {}
    while at < len(events):
        cut = min(len(events), at + rng.randrange(1, 80))
        arrivals = []
        for ev in events[at:cut]:
            wm = -1 if top is None else top - lateness
            top = ev.ts if top is None else max(top, ev.ts)
            if ev.event_id in seen:
                continue
            seen.add(ev.event_id)
            arrivals.append(Arrival(Event(event_id=ev.event_id, type=ev.type, user_id=ev.user_id,  # type: ignore[arg-type]
                                          item_id=ev.item_id, ts=ev.ts, request_id=ev.request_id,
                                          position=ev.position), wm, ev.category, ev.author_id))
        join.add(arrivals, out)
        assert top is not None
        join.close(top - lateness, out)
        at = cut
        if checkpoint:
            blobs = {u: msgspec.msgpack.encode(s) for u, s in join.users.items()}
            join = PartitionJoin(cfg, {u: msgspec.msgpack.decode(b, type=UserJoin) for u, b in blobs.items()})
    for s in out.samples:
        assert s.sample_id not in samples, "a sample was emitted twice"
        samples[s.sample_id] = record(s)
    return samples


@pytest.mark.parametrize(("seed", "alpha", "checkpoint"), [(1, 1.0, False), (2, 1.0, True), (3, 0.3, False),
                                                           (4, 0.5, True), (5, 1.0, False)])
def test_join_equals_the_brute_force_reference(seed: int, alpha: float, checkpoint: bool) -> None:
    events = random_stream(seed)
    lateness = 5 * M
    cfg = JoinConfig(WINDOWS, history=4, click_capacity=6, alpha=alpha, idle_user_ms=2 * 60 * M)
    ref = join_partition(events, Params(WINDOWS, lateness, history=4, capacity=6, alpha=alpha, idle=2 * 60 * M))
    got = run_join(events, cfg, lateness, random.Random(seed))
    assert got == ref
    kinds = [v["kind"] for v in ref.values()]
    assert kinds.count("positive") > 10 and kinds.count("impression") > 20
    assert any(v["history"] for v in ref.values()) and any(not v["history"] for v in ref.values())


def test_batch_cuts_and_checkpoints_do_not_change_the_samples() -> None:
    events = random_stream(9)
    cfg = JoinConfig(WINDOWS, history=5, click_capacity=8, idle_user_ms=2 * 60 * M)
    runs = [run_join(events, cfg, 2 * M, random.Random(k), checkpoint=bool(k % 2)) for k in range(4)]
    assert all(r == runs[0] for r in runs)


@pytest.mark.parametrize(("case", "expected"), [
    # (events as (id, type, item, ts, request)), the joined impression labels
    ("click after impression", {"e1": {"click"}}),
    ("click before impression", {"e1": {"click"}}),
    ("click outside window", {"e1": set()}),
    ("request id mismatch", {"e1": set()}),
    ("newest impression wins", {"e1": set(), "e2": {"like"}}),
])
def test_matching_rules(case: str, expected: dict[str, set[str]]) -> None:
    streams = {
        "click after impression": [("e1", "impression", "i", 0, "r"), ("e2", "click", "i", 5 * M, "r")],
        "click before impression": [("e2", "click", "i", 5 * M, "r"), ("e1", "impression", "i", 0, "r")],
        "click outside window": [("e1", "impression", "i", 0, "r"), ("e2", "click", "i", 11 * M, "r")],
        "request id mismatch": [("e1", "impression", "i", 0, "r"), ("e2", "click", "i", M, "q")],
        "newest impression wins": [("e1", "impression", "i", 0, "r"), ("e2", "impression", "i", M, "s"),
                                   ("e3", "like", "i", 2 * M, None)],
    }
    join, out = PartitionJoin(JoinConfig(WINDOWS)), JoinOutput()
    join.add([Arrival(Event(event_id=i, type=t, user_id="u", item_id=it, ts=ts, request_id=r), -1)  # type: ignore[arg-type]
              for i, t, it, ts, r in streams[case]], out)
    join.close(10**9, out)
    labels = {s.sample_id: s for s in out.samples if s.kind == "impression"}
    got = {}
    for s in labels.values():
        imp = next(i for i, t, it, ts, r in streams[case] if t == "impression" and ts == s.impression_ts)
        got[imp] = {a for a, v in (s.labels or {}).items() if v}
    assert got == expected


def test_state_is_bounded_and_expires_with_the_window() -> None:
    cfg = JoinConfig(WINDOWS, idle_user_ms=2 * 60 * M)
    join, out = PartitionJoin(cfg), JoinOutput()
    for k in range(2000):
        ts = k * 10_000
        join.add([Arrival(Event(event_id=f"e{k}", type="impression", user_id=f"u{k % 50}", item_id="i", ts=ts),
                          ts - 1)], out)
        join.close(ts, out)
    # at 10 s per impression and a 30-minute longest window, about 180 are open at any time
    assert 150 <= join.open_impressions <= 190
    join.close(10**12, out)
    assert join.open_impressions == 0 and join.users == {}


def test_downsampling_and_calibration() -> None:
    share = sum(keeps(f"s1-{k:032x}", 0.2) for k in range(20_000)) / 20_000
    assert abs(share - 0.2) < 0.01
    p_model = 0.5  # trained on negatives kept at 0.2 -> the odds are 5x too high
    assert abs(calibrate(p_model, 0.2) / (1 - calibrate(p_model, 0.2)) - 0.2) < 1e-12


def test_windows_must_name_every_action() -> None:
    with pytest.raises(ValueError, match="must name exactly the actions"):
        JoinConfig({"click": 1})
    with pytest.raises(ValueError, match="idle_user_ms"):
        JoinConfig(WINDOWS, idle_user_ms=1)


@pytest.mark.parametrize(("user", "kinds"), [("u1", ["positive", "impression"]), ("__canary__.3.0", ["canary"])])
def test_canary_users_never_become_training_samples(user: str, kinds: list[str]) -> None:
    """A canary's impression joins nothing and its click passes through as one heartbeat record."""
    join, out = PartitionJoin(JoinConfig(WINDOWS)), JoinOutput()
    join.add([Arrival(Event(event_id="i1", type="impression", user_id=user, item_id="x", ts=1_000, request_id="r"),
                      0),
              Arrival(Event(event_id="c1", type="click", user_id=user, item_id="x", ts=2_000, request_id="r"),
                      0),
              Arrival(Event(event_id="c1", type="click", user_id=user, item_id="x", ts=2_000, request_id="r"),
                      0, log_only=True)], out)
    join.close(10**12, out)
    assert [s.kind for s in out.samples] == kinds
    assert not join.users or user == "u1"  # no join state for canaries
