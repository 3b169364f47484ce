"""The event decoder: contract cases, and fuzzing — it never raises anything but EventValidationError."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from filters.events import MAX_MESSAGE_BYTES, Event, decode_event, decode_item, encode
from infra.errors import EventValidationError

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
