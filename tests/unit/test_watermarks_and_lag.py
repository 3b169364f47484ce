"""Event-time clocks and consumer-lag arithmetic (pure parts)."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException

from infra.topics import transient
from stream.lag import caught_up, lag_rows
from stream.watermarks import NO_TS, PartitionClock


@pytest.mark.parametrize(
    ("lateness", "stream", "late"),
    [
        (0, [5, 5, 4], [False, False, True]),
        (10, [100, 90, 89, 120, 110, 109], [False, False, True, False, False, True]),
        (10, [50, 100, 40], [False, False, True]),
        (1000, [3, 2, 1], [False, False, False]),
    ],
)
def test_late_flags_follow_the_prior_watermark(lateness: int, stream: list[int], late: list[bool]) -> None:
    clock = PartitionClock(lateness)
    assert [clock.observe(ts, off) for off, ts in enumerate(stream)] == late


def test_clock_position_covers_what_it_observed_within_batched_records() -> None:
    clock = PartitionClock(0)
    for offset, index, ts in [(3, 0, 10), (3, 1, 11), (4, 0, 12)]:
        assert not clock.covers(offset, index)
        clock.observe(ts, offset, index)
        assert clock.covers(offset, index)
    assert (clock.offset, clock.index) == (4, 0)
    assert clock.covers(3, 9) and not clock.covers(4, 1) and not clock.covers(5, 0)


def test_resumed_clock_classifies_like_the_first_run() -> None:
    stream = [100, 90, 150, 130, 60, 200, 185]
    first = PartitionClock(20)
    flags = [first.observe(ts, off) for off, ts in enumerate(stream)]
    # persisted after offset 3, resumed: the rest is classified identically
    resumed = PartitionClock(20)
    for off, ts in enumerate(stream[:4]):
        resumed.observe(ts, off)
    again = PartitionClock(20, resumed.max_ts, resumed.offset)
    assert [again.observe(ts, off) for off, ts in enumerate(stream) if off > 3] == flags[4:]


def test_fresh_clock_has_no_watermark() -> None:
    assert PartitionClock(5).watermark == NO_TS


def test_lag_rows_and_caught_up() -> None:
    rows = lag_rows({("a", 0): 10, ("a", 1): None, ("b", 0): 3}, {("a", 0): 10, ("a", 1): 4, ("b", 0): 3}, "g")
    assert [r.lag for r in rows] == [0, 4, 0]
    assert not caught_up(rows, {})
    assert caught_up(rows, {("a", 1): 0})


@pytest.mark.parametrize(("code", "retriable", "expected"), [
    (KafkaError.COORDINATOR_LOAD_IN_PROGRESS, False, True),  # a broker that just started
    (KafkaError.NOT_COORDINATOR, False, True),
    (KafkaError._TRANSPORT, True, True),
    (KafkaError.GROUP_AUTHORIZATION_FAILED, False, False),
])
def test_only_transient_offset_errors_are_asked_again(code: int, retriable: bool, expected: bool) -> None:
    assert transient(KafkaException(KafkaError(code, retriable=retriable))) is expected
