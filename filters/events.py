"""The event contract: typed, validated decoding of one Kafka message (see docs/events.md).

An event is one JSON object; unknown extra fields are ignored. Decoding either returns a frozen
:class:`Event` / :class:`ItemMeta` or raises :class:`~infra.errors.EventValidationError` with a short
reason code — never anything else, whatever the bytes (fuzzed in tests).

A record on the events topic carries either one event object or a JSON array of them (a *batched
record*, see :func:`decode_record` / :func:`encode_batch`); :func:`decode_record` never raises.

>>> ev = decode_event(b'{"event_id":"e1","type":"click","user_id":"u1","item_id":"i9","ts":1700000000000}')
>>> ev.type, ev.user_id, ev.category
('click', 'u1', None)
>>> decode_event(b'{"event_id":"e1","type":"buy","user_id":"u1","item_id":"i9","ts":1}')
Traceback (most recent call last):
...
infra.errors.EventValidationError: invalid_field: Invalid enum value 'buy' - at `$.type`
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Literal, NamedTuple, TypeVar

import msgspec

from infra.errors import EventValidationError, InputError

ACTIONS: tuple[str, ...] = ("click", "like", "collect", "share", "comment")
"""The interaction types, in the counter order used everywhere (tiles, Lua, sequences)."""
EVENT_TYPES: tuple[str, ...] = ("impression", *ACTIONS)
"""Every event type: ``impression`` then the actions; an event's type index is its position here."""

# Identifiers: 1..128 characters, no control characters (they would break Redis member ordering). The
# control-character rule is checked outside msgspec (a pattern costs ~85 % of a decode): raw JSON cannot
# carry U+0000..U+001F unescaped, so only a record with a backslash or a DEL byte can hold one, and only
# those records are checked field by field (:func:`_check_idents`).
Ident = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Event time in epoch milliseconds: 1970 .. 2286 (13 digits), so seconds or microseconds are caught.
EpochMs = Annotated[int, msgspec.Meta(ge=0, lt=10_000_000_000_000)]
EventType = Literal["impression", "click", "like", "collect", "share", "comment"]

MAX_MESSAGE_BYTES = 64 * 1024
"""The limit of one event (a single-event record, or one element of a batched record)."""
MAX_RECORD_BYTES = 1024 * 1024
"""The limit of a whole batched record."""
MAX_EVENTS_PER_RECORD = 10_000
"""The most events one batched record may carry."""


class Event(msgspec.Struct, frozen=True, omit_defaults=True):
    """One impression or interaction, keyed by ``user_id`` on the events topic."""

    event_id: Ident
    type: EventType
    user_id: Ident
    item_id: Ident
    ts: EpochMs
    request_id: Ident | None = None
    position: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] | None = None
    category: Ident | None = None
    author_id: Ident | None = None


class ItemMeta(msgspec.Struct, frozen=True, omit_defaults=True):
    """Item metadata on the compacted items topic, keyed by ``item_id``."""

    item_id: Ident
    category: Ident | None = None
    author_id: Ident | None = None
    publish_ts: EpochMs | None = None


_event_decoder = msgspec.json.Decoder(Event)
_item_decoder = msgspec.json.Decoder(ItemMeta)
_batch_decoder = msgspec.json.Decoder(list[Event])
_split_decoder = msgspec.json.Decoder(list[msgspec.Raw])
_encoder = msgspec.json.Encoder()
_DECODE_ERRORS = (msgspec.MsgspecError, UnicodeDecodeError, ValueError, TypeError)
_JSON_SPACE = b" \t\n\r"
_T = TypeVar("_T")


def _may_hold_controls(raw: bytes | bytearray | memoryview | str) -> bool:
    """Can an identifier decoded from ``raw`` contain a control character (an escape or a raw DEL)?"""
    if isinstance(raw, str):
        return "\\" in raw or "\x7f" in raw
    data = raw if isinstance(raw, bytes | bytearray) else bytes(raw)  # memoryview, msgspec.Raw
    return b"\\" in data or b"\x7f" in data


def _check_idents(obj: object) -> None:
    """Raise the ``invalid_field`` error msgspec would give if an identifier holds a control character.

    >>> _check_idents(ItemMeta(item_id="i\\n1"))
    Traceback (most recent call last):
    ...
    infra.errors.EventValidationError: invalid_field: Expected `str` without control characters - at `$.item_id`
    """
    for name in obj.__struct_fields__:  # type: ignore[attr-defined]
        value = getattr(obj, name)
        if isinstance(value, str) and _CONTROL.search(value):
            raise EventValidationError("invalid_field", f"Expected `str` without control characters - at `$.{name}`")


def _decode(decoder: msgspec.json.Decoder[_T], raw: bytes | bytearray | memoryview | str | None) -> _T:
    if raw is None:
        raise EventValidationError("empty", "message has no value")
    if len(raw) > MAX_MESSAGE_BYTES:
        raise EventValidationError("too_large", f"{len(raw)} bytes > {MAX_MESSAGE_BYTES}")
    try:
        obj = decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise EventValidationError("invalid_field", str(exc)) from None
    except msgspec.DecodeError as exc:
        raise EventValidationError("invalid_json", str(exc)) from None
    except (UnicodeDecodeError, ValueError, TypeError) as exc:
        raise EventValidationError("invalid_json", str(exc)) from None
    if _may_hold_controls(raw):
        _check_idents(obj)
    return obj


def decode_event(raw: bytes | bytearray | memoryview | str | None) -> Event:
    """Decode and validate one event; raises only :class:`EventValidationError`."""
    return _decode(_event_decoder, raw)


def decode_item(raw: bytes | bytearray | memoryview | str | None) -> ItemMeta:
    """Decode and validate one item-metadata record; raises only :class:`EventValidationError`.

    >>> decode_item(b'{"item_id":"i1","category":"food","author_id":"a1","publish_ts":0}').category
    'food'
    """
    return _decode(_item_decoder, raw)


CANARY_PREFIX = "__canary__"
"""User ids starting with this are freshness canaries (``recstream canary``): they get features like any
user, so their freshness can be read back, but the label join never samples them (no training data)."""


CANARY_FAMILIES = ("exposure", "last_n", "stats", "samples", "embeddings")
"""The feature families ``recstream canary`` measures produce → readable for (docs/operations.md)."""


def is_canary(user_id: str) -> bool:
    """True for a canary user id.

    >>> is_canary("__canary__.3.0"), is_canary("u1")
    (True, False)
    """
    return user_id.startswith(CANARY_PREFIX)


def check_user(user_id: object) -> str:
    """Return ``user_id`` if it is a non-empty str, else raise :class:`~infra.errors.InputError`.

    >>> check_user("")
    Traceback (most recent call last):
    ...
    infra.errors.InputError: user_id must be a non-empty str, got ''
    """
    if not isinstance(user_id, str) or not user_id:
        msg = f"user_id must be a non-empty str, got {user_id!r}"
        raise InputError(msg)
    return user_id


def encode(obj: Event | ItemMeta) -> bytes:
    """Encode an event or item record as compact JSON (``None`` fields left out).

    >>> encode(Event(event_id="e", type="like", user_id="u", item_id="i", ts=5))
    b'{"event_id":"e","type":"like","user_id":"u","item_id":"i","ts":5}'
    """
    return _encoder.encode(obj)


# -- batched records ------------------------------------------------------------------------------------
class RecordError(NamedTuple):
    """One problem of a record: the bad element's ``batch_index``, or ``None`` for the whole record."""

    batch_index: int | None
    raw: bytes
    """The bytes to dead-letter: the bad element's, or the whole record's."""
    error: EventValidationError


class DecodedRecord(msgspec.Struct, frozen=True):
    """What :func:`decode_record` found in one record; ``events`` keep the record's order."""

    events: list[tuple[int, Event]]
    """``(index in the record, event)``; the index is 0 for a single-event record."""
    errors: list[RecordError]
    batched: bool
    """True when the record is a JSON array (even a broken one)."""


def decode_record(raw: bytes | bytearray | memoryview | None) -> DecodedRecord:
    """Decode one events-topic record — one event object or a JSON array of them. Never raises.

    A bad element of an array is reported alone, with its index and raw bytes; the other events are
    returned. A record that cannot be split into elements (not JSON, an empty array, more than
    :data:`MAX_RECORD_BYTES` or :data:`MAX_EVENTS_PER_RECORD`) is one error with index ``None``.
    A single-event record behaves exactly like :func:`decode_event` (its error has index ``None``).

    >>> ok = b'{"event_id":"e1","type":"click","user_id":"u1","item_id":"i9","ts":1}'
    >>> rec = decode_record(b"[" + ok + b',{"event_id":"e2"},' + ok + b"]")
    >>> [(i, ev.event_id) for i, ev in rec.events], rec.batched
    ([(0, 'e1'), (2, 'e1')], True)
    >>> [(e.batch_index, e.raw, e.error.reason) for e in rec.errors]
    [(1, b'{"event_id":"e2"}', 'invalid_field')]
    >>> decode_record(ok).events[0][0], decode_record(b"[]").errors[0].error.reason
    (0, 'empty')
    >>> bad = decode_record(b"[{broken")
    >>> bad.events, bad.errors[0].batch_index, bad.errors[0].error.reason
    ([], None, 'invalid_json')
    """
    if raw is None:
        return _whole(b"", "empty", "message has no value", batched=False)
    if not _is_array(raw):
        try:
            return DecodedRecord([(0, decode_event(raw))], [], batched=False)
        except EventValidationError as exc:
            return DecodedRecord([], [RecordError(None, bytes(raw), exc)], batched=False)
    size = len(raw)
    if size > MAX_RECORD_BYTES:
        return _whole(raw, "too_large", f"{size} bytes > {MAX_RECORD_BYTES}")
    parts: list[msgspec.Raw] | None = None
    if size > MAX_MESSAGE_BYTES:  # an element might be too large: look at the elements first
        split = _split(raw)
        if isinstance(split, DecodedRecord):
            return split
        parts = split
        if any(len(p) > MAX_MESSAGE_BYTES for p in parts):
            return _decode_elements(parts)
    try:  # the fast path: one decoder call for the whole array of valid events
        events = _batch_decoder.decode(raw)
    except _DECODE_ERRORS:
        split = _split(raw) if parts is None else parts
        return split if isinstance(split, DecodedRecord) else _decode_elements(split)
    if not events:
        return _whole(raw, "empty", "empty array")
    if len(events) > MAX_EVENTS_PER_RECORD:
        return _whole(raw, "too_many_events", f"{len(events)} events > {MAX_EVENTS_PER_RECORD}")
    if _may_hold_controls(raw):  # rare: check element by element, so a bad one is reported alone
        split = _split(raw) if parts is None else parts
        return split if isinstance(split, DecodedRecord) else _decode_elements(split)
    return DecodedRecord(list(enumerate(events)), [], batched=True)


def _is_array(raw: bytes | bytearray | memoryview) -> bool:
    head = raw[:1]
    if head == b"[":
        return True
    if len(head) == 0 or head[0] not in _JSON_SPACE:
        return False
    return bytes(raw).lstrip(_JSON_SPACE)[:1] == b"["


def _whole(raw: bytes | bytearray | memoryview, reason: str, detail: str, *, batched: bool = True) -> DecodedRecord:
    error = RecordError(None, bytes(raw), EventValidationError(reason, detail))
    return DecodedRecord([], [error], batched=batched)


def _split(raw: bytes | bytearray | memoryview) -> list[msgspec.Raw] | DecodedRecord:
    """The elements of a JSON array, or the whole-record error."""
    try:
        parts = _split_decoder.decode(raw)
    except _DECODE_ERRORS as exc:
        return _whole(raw, "invalid_json", str(exc))
    if not parts:
        return _whole(raw, "empty", "empty array")
    if len(parts) > MAX_EVENTS_PER_RECORD:
        return _whole(raw, "too_many_events", f"{len(parts)} events > {MAX_EVENTS_PER_RECORD}")
    return parts


def record_elements(raw: bytes | bytearray | memoryview) -> list[bytes]:
    """The raw bytes of every element of a batched record that :func:`decode_record` accepted as an array.

    >>> record_elements(b'[{"a":1}, {"b":2}]')
    [b'{"a":1}', b'{"b":2}']
    """
    return [bytes(part) for part in _split_decoder.decode(raw)]


def _decode_elements(parts: list[msgspec.Raw]) -> DecodedRecord:
    events: list[tuple[int, Event]] = []
    errors: list[RecordError] = []
    for i, part in enumerate(parts):
        try:
            events.append((i, _decode(_event_decoder, part)))
        except EventValidationError as exc:
            errors.append(RecordError(i, bytes(part), exc))
    return DecodedRecord(events, errors, batched=True)


def encode_batch(events: Sequence[Event]) -> bytes:
    """Encode events as one batched record: a compact JSON array.

    Raises :class:`~infra.errors.InputError` for no events, more than :data:`MAX_EVENTS_PER_RECORD`,
    or more than :data:`MAX_RECORD_BYTES`. All events should share a partition (the producer's job).

    >>> ev = Event(event_id="e", type="like", user_id="u", item_id="i", ts=5)
    >>> encode_batch([ev, ev])
    b'[{"event_id":"e","type":"like","user_id":"u","item_id":"i","ts":5},{"event_id":"e","type":"like","user_id":"u","item_id":"i","ts":5}]'
    >>> [e for _, e in decode_record(encode_batch([ev])).events] == [ev]
    True
    """
    if not events or len(events) > MAX_EVENTS_PER_RECORD:
        msg = f"a batched record carries 1..{MAX_EVENTS_PER_RECORD} events, got {len(events)}"
        raise InputError(msg)
    out = _encoder.encode(events if isinstance(events, list | tuple) else list(events))
    if len(out) > MAX_RECORD_BYTES:
        msg = f"batched record of {len(events)} events is {len(out)} bytes > {MAX_RECORD_BYTES}"
        raise InputError(msg)
    return out
