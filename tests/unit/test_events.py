"""The event decoder: contract cases, and fuzzing — it never raises anything but EventValidationError."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from filters.events import (
    MAX_EVENTS_PER_RECORD,
    MAX_MESSAGE_BYTES,
    MAX_RECORD_BYTES,
    Event,
    decode_event,
    decode_item,
    decode_record,
    encode,
    encode_batch,
)
from infra.errors import EventValidationError, InputError

VALID = {"event_id": "e1", "type": "click", "user_id": "u1", "item_id": "i1", "ts": 1_700_000_000_000}


def raw(**changes: object) -> bytes:
    doc = {**VALID, **changes}
    return json.dumps({k: v for k, v in doc.items() if v is not ...}).encode()


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "invalid_json"),
        (None, "empty"),
        (b"not json", "invalid_json"),
        (b"[1, 2]", "invalid_field"),
        (raw(type="buy"), "invalid_field"),
        (raw(ts=1.5), "invalid_field"),
        (raw(ts=True), "invalid_field"),
        (raw(ts=-1), "invalid_field"),
        (raw(ts=17_000_000_000_000_000), "invalid_field"),  # microseconds, not milliseconds
        (raw(user_id=""), "invalid_field"),
        (raw(user_id="x" * 129), "invalid_field"),
        (raw(event_id="a\u0000b"), "invalid_field"),
        (raw(item_id=...), "invalid_field"),
        (raw(position=-1), "invalid_field"),
        (b" " * (MAX_MESSAGE_BYTES + 1), "too_large"),
    ],
)
def test_invalid_messages_are_rejected_with_a_reason(payload: bytes | None, reason: str) -> None:
    with pytest.raises(EventValidationError) as info:
        decode_event(payload)
    assert info.value.reason == reason


def test_valid_event_with_optional_and_unknown_fields() -> None:
    ev = decode_event(raw(position=3, category="food", author_id="a1", request_id="r", extra={"x": 1}))
    assert ev == Event(event_id="e1", type="click", user_id="u1", item_id="i1", ts=1_700_000_000_000,
                       request_id="r", position=3, category="food", author_id="a1")
    assert decode_event(encode(ev)) == ev


def test_item_metadata() -> None:
    assert decode_item(b'{"item_id": "i1", "publish_ts": 5}').publish_ts == 5
    with pytest.raises(EventValidationError):
        decode_item(b'{"category": "food"}')


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_bytes_only_raise_validation_errors(data: bytes) -> None:
    with contextlib.suppress(EventValidationError):
        decode_event(data)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from([*VALID, "position", "category", "x"]), json_values, max_size=8))
def test_fuzz_json_documents_only_raise_validation_errors(doc: dict[str, object]) -> None:
    merged = {**VALID, **doc}
    try:
        ev = decode_event(json.dumps(merged).encode())
    except EventValidationError:
        return
    assert isinstance(ev.ts, int) and ev.ts >= 0
    assert 1 <= len(ev.user_id) <= 128


# -- batched records: decode_record / encode_batch -------------------------------------------------------
def batch(*elements: bytes) -> bytes:
    return b"[" + b",".join(elements) + b"]"


def ev(i: int, user: str = "u1") -> Event:
    return Event(event_id=f"e{i}", type="impression", user_id=user, item_id=f"i{i}", ts=1_700_000_000_000 + i)


GOOD = [encode(ev(i)) for i in range(6)]


def test_valid_batch_keeps_order_and_indexes() -> None:
    rec = decode_record(batch(*GOOD))
    assert rec.batched and rec.errors == []
    assert rec.events == [(i, ev(i)) for i in range(6)]


@pytest.mark.parametrize(
    ("bad", "reasons"),
    [
        ({0: raw(type="buy")}, {0: "invalid_field"}),
        ({5: b"1", 2: b'"x"'}, {2: "invalid_field", 5: "invalid_field"}),
        ({1: b"null", 3: b"[]", 4: b"{}"}, {1: "invalid_field", 3: "invalid_field", 4: "invalid_field"}),
        ({2: b'{"event_id":"e","pad":"' + b"x" * MAX_MESSAGE_BYTES + b'"}'}, {2: "too_large"}),
        ({3: raw(ts=17_000_000_000_000_000)}, {3: "invalid_field"}),
    ],
)
def test_bad_events_in_a_batch_are_reported_alone(bad: dict[int, bytes], reasons: dict[int, str]) -> None:
    elements = [bad.get(i, g) for i, g in enumerate(GOOD)]
    rec = decode_record(batch(*elements))
    assert rec.batched
    assert [(e.batch_index, e.raw, e.error.reason) for e in rec.errors] == [
        (i, bad[i], reasons[i]) for i in sorted(bad)
    ]
    assert rec.events == [(i, ev(i)) for i in range(6) if i not in bad]


@pytest.mark.parametrize(
    ("payload", "reason", "batched"),
    [
        (b"[{broken", "invalid_json", True),
        (b"[1, 2", "invalid_json", True),
        (b"[]", "empty", True),
        (b" \n [ ] ", "empty", True),
        (b"[" + b"1," * MAX_EVENTS_PER_RECORD + b"1]", "too_many_events", True),
        (b"[" + b" " * MAX_RECORD_BYTES + b"]", "too_large", True),
        (batch(*[raw(event_id="x" * 100)] * 6000), "too_large", True),  # > 1 MiB of valid events
        (b"not json", "invalid_json", False),
        (b"", "invalid_json", False),
        (None, "empty", False),
        (b"42", "invalid_field", False),
        (b'"a string"', "invalid_field", False),
    ],
)
def test_whole_record_errors(payload: bytes | None, reason: str, batched: bool) -> None:
    rec = decode_record(payload)
    assert rec.events == [] and rec.batched is batched
    [(index, raw_bytes, error)] = rec.errors
    assert (index, error.reason) == (None, reason)
    assert raw_bytes == (payload or b"")


def test_too_many_valid_events_is_one_error() -> None:
    small = b'{"event_id":"e","type":"like","user_id":"u","item_id":"i","ts":0}'
    rec = decode_record(batch(*[small] * (MAX_EVENTS_PER_RECORD + 1)))
    assert [(e.batch_index, e.error.reason) for e in rec.errors] == [(None, "too_many_events")]
    assert len(decode_record(batch(*[small] * MAX_EVENTS_PER_RECORD)).events) == MAX_EVENTS_PER_RECORD


def test_large_batch_uses_the_same_rules() -> None:
    """Above 64 KiB the elements are sized first; valid ones still come back in order."""
    many = [encode(ev(i, user="u" * 100)) for i in range(1000)]
    assert len(batch(*many)) > MAX_MESSAGE_BYTES
    assert decode_record(batch(*many)).events == [(i, ev(i, user="u" * 100)) for i in range(1000)]
    many[700] = b'{"x":"' + b"y" * MAX_MESSAGE_BYTES + b'"}'
    rec = decode_record(batch(*many))
    assert [(e.batch_index, e.error.reason) for e in rec.errors] == [(700, "too_large")]
    assert len(rec.events) == 999


@pytest.mark.parametrize(
    "payload",
    [raw(), raw(type="buy"), b"not json", b"", raw(user_id=""), b" " * (MAX_MESSAGE_BYTES + 1), b"  {}"],
)
def test_single_event_records_behave_like_decode_event(payload: bytes) -> None:
    rec = decode_record(payload)
    assert not rec.batched
    try:
        expected = decode_event(payload)
    except EventValidationError as exc:
        [(index, raw_bytes, error)] = rec.errors
        assert (index, raw_bytes, error.reason, error.detail) == (None, payload, exc.reason, exc.detail)
        assert rec.events == []
    else:
        assert rec.events == [(0, expected)] and rec.errors == []


def test_memoryview_and_bytearray_inputs() -> None:
    data = batch(*GOOD[:2])
    assert decode_record(memoryview(data)) == decode_record(bytearray(data)) == decode_record(data)
    assert decode_record(memoryview(b"  " + GOOD[0])).events == [(0, ev(0))]


def test_encode_batch_round_trip_and_limits() -> None:
    events = [ev(i, user=f"u{i % 3}") for i in range(50)]
    data = encode_batch(events)
    assert data == batch(*(encode(e) for e in events))
    assert [e for _, e in decode_record(data).events] == events
    assert encode_batch(tuple(events)) == encode_batch(ListView(events)) == data
    with pytest.raises(InputError):
        encode_batch([])
    with pytest.raises(InputError):
        encode_batch([ev(0)] * (MAX_EVENTS_PER_RECORD + 1))
    with pytest.raises(InputError):
        encode_batch([msgspec.structs.replace(ev(0, user="u" * 128), item_id="i" * 128)] * 9000)  # > 1 MiB


class ListView(Sequence[Event]):
    """A minimal Sequence that is neither a list nor a tuple."""

    def __init__(self, items: list[Event]) -> None:
        self._items = items

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i):  # type: ignore[no-untyped-def]
        return self._items[i]


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_decode_record_never_raises_for_bytes(data: bytes) -> None:
    for payload in (data, b"[" + data, b"[" + data + b"]"):
        rec = decode_record(payload)
        assert len(rec.events) + len(rec.errors) >= 1


@settings(max_examples=400, deadline=None)
@given(st.lists(json_values | st.just(VALID) | st.dictionaries(st.sampled_from([*VALID, "x"]), json_values),
                max_size=8))
def test_fuzz_decode_record_never_raises_for_arrays(elements: list[object]) -> None:
    try:
        doc = json.dumps(elements, allow_nan=False).encode()
    except ValueError:  # ±inf: Python's json writes Infinity, which is not JSON, so the record is not
        rec = decode_record(json.dumps(elements).encode())
        assert [(e.batch_index, e.error.reason) for e in rec.errors] == [(None, "invalid_json")]
        return
    rec = decode_record(doc)
    assert rec.batched
    if not elements:
        assert [e.error.reason for e in rec.errors] == ["empty"]
        return
    bad = [e.batch_index for e in rec.errors if e.batch_index is not None]
    assert len(bad) == len(rec.errors)
    assert sorted([i for i, _ in rec.events] + bad) == list(range(len(elements)))
    for e, i in zip(rec.errors, bad, strict=True):
        assert json.loads(e.raw) == elements[i]
