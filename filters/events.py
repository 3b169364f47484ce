"""The event contract: typed, validated decoding of one Kafka message (see docs/events.md).

An event is one JSON object; unknown extra fields are ignored. Decoding either returns a frozen
:class:`Event` / :class:`ItemMeta` or raises :class:`~infra.errors.EventValidationError` with a short
reason code — never anything else, whatever the bytes (fuzzed in tests).

>>> ev = decode_event(b'{"event_id":"e1","type":"click","user_id":"u1","item_id":"i9","ts":1700000000000}')
>>> ev.type, ev.user_id, ev.category
('click', 'u1', None)
>>> decode_event(b'{"event_id":"e1","type":"buy","user_id":"u1","item_id":"i9","ts":1}')
Traceback (most recent call last):
...
infra.errors.EventValidationError: invalid_field: Invalid enum value 'buy' - at `$.type`
"""

from __future__ import annotations

from typing import Annotated, Literal, TypeVar

import msgspec

from infra.errors import EventValidationError, InputError

ACTIONS: tuple[str, ...] = ("click", "like", "collect", "share", "comment")
"""The interaction types, in the counter order used everywhere (tiles, Lua, sequences)."""
EVENT_TYPES: tuple[str, ...] = ("impression", *ACTIONS)
"""Every event type: ``impression`` then the actions; an event's type index is its position here."""

# Identifiers: 1..128 characters, no control characters (they would break Redis member ordering).
Ident = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")]
# Event time in epoch milliseconds: 1970 .. 2286 (13 digits), so seconds or microseconds are caught.
EpochMs = Annotated[int, msgspec.Meta(ge=0, lt=10_000_000_000_000)]
EventType = Literal["impression", "click", "like", "collect", "share", "comment"]

MAX_MESSAGE_BYTES = 64 * 1024


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
_encoder = msgspec.json.Encoder()
_T = TypeVar("_T")


def _decode(decoder: msgspec.json.Decoder[_T], raw: bytes | bytearray | memoryview | str | None) -> _T:
    if raw is None:
        raise EventValidationError("empty", "message has no value")
    if len(raw) > MAX_MESSAGE_BYTES:
        raise EventValidationError("too_large", f"{len(raw)} bytes > {MAX_MESSAGE_BYTES}")
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise EventValidationError("invalid_field", str(exc)) from None
    except msgspec.DecodeError as exc:
        raise EventValidationError("invalid_json", str(exc)) from None
    except (UnicodeDecodeError, ValueError, TypeError) as exc:
        raise EventValidationError("invalid_json", str(exc)) from None


def decode_event(raw: bytes | bytearray | memoryview | str | None) -> Event:
    """Decode and validate one event; raises only :class:`EventValidationError`."""
    return _decode(_event_decoder, raw)


def decode_item(raw: bytes | bytearray | memoryview | str | None) -> ItemMeta:
    """Decode and validate one item-metadata record; raises only :class:`EventValidationError`.

    >>> decode_item(b'{"item_id":"i1","category":"food","author_id":"a1","publish_ts":0}').category
    'food'
    """
    return _decode(_item_decoder, raw)


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
