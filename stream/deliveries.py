"""What the agents hand to the feature writers: one Kafka delivery of one validated event.

A :class:`Delivery` is one event of one message of the user-keyed events topic; its source position
``(offset, index)`` — the index is its place in a batched record, 0 for a single-event record — is what
the replay guard compares. A :class:`ForwardedDelivery` is a *first* delivery re-published by the user
stage on the by-item / by-author repartition topic; it carries its source partition and position so the
entity stage can guard on them. Both are frozen; forwarded deliveries travel as compact JSON, several
per message (one message per target partition and batch).

>>> from filters.events import Event
>>> ev = Event(event_id="e1", type="click", user_id="u1", item_id="i1", ts=1_700_000_000_000)
>>> d = Delivery(offset=41, event=ev, stats_late=False, category="food", author_id="a1")
>>> fwd = d.forwarded(partition=3)
>>> raw = encode_forwarded_batch([fwd])
>>> raw
b'[[3,41,0,{"event_id":"e1","type":"click","user_id":"u1","item_id":"i1","ts":1700000000000},false,"food","a1"]]'
>>> decode_forwarded_batch(raw) == [fwd]
True
>>> decode_forwarded_batch(b'[[1]]')
Traceback (most recent call last):
...
infra.errors.EventValidationError: invalid_forward: Expected `array` of at least length 4, got 1 - at `$[0]`
"""

from __future__ import annotations

import msgspec

from filters.events import Event
from infra.errors import EventValidationError

__all__ = [
    "Delivery",
    "ForwardedDelivery",
    "decode_forwarded_batch",
    "encode_forwarded_batch",
]


class Delivery(msgspec.Struct, frozen=True):
    """One delivery of one event from the user-keyed events topic.

    ``stats_late`` means the event is older than the partition watermark: it still enters the
    last-N sequences but is left out of every statistic. ``category`` / ``author_id`` come from the
    event, else from the item metadata (the agent resolves them; ``None`` = unknown).
    """

    offset: int
    event: Event
    stats_late: bool = False
    category: str | None = None
    author_id: str | None = None
    index: int = 0

    def forwarded(self, partition: int) -> ForwardedDelivery:
        """This delivery as it is re-published on a repartition topic from source ``partition``."""
        return ForwardedDelivery(
            source_partition=partition,
            source_offset=self.offset,
            source_index=self.index,
            event=self.event,
            stats_late=self.stats_late,
            category=self.category,
            author_id=self.author_id,
        )


class ForwardedDelivery(msgspec.Struct, frozen=True, array_like=True):
    """A first delivery forwarded to the item / author stage (guarded per source partition)."""

    source_partition: int
    source_offset: int
    source_index: int
    event: Event
    stats_late: bool = False
    category: str | None = None
    author_id: str | None = None


_encoder = msgspec.json.Encoder()
_batch_decoder = msgspec.json.Decoder(list[ForwardedDelivery])


def encode_forwarded_batch(deliveries: list[ForwardedDelivery]) -> bytes:
    """Several forwarded deliveries bound for one repartition partition, as one message (a JSON array).

    >>> ev = Event(event_id="e", type="click", user_id="u", item_id="i", ts=5)
    >>> raw = encode_forwarded_batch([ForwardedDelivery(0, 7, 0, ev), ForwardedDelivery(0, 7, 1, ev)])
    >>> [(d.source_offset, d.source_index) for d in decode_forwarded_batch(raw)]
    [(7, 0), (7, 1)]
    """
    return _encoder.encode(deliveries)


def decode_forwarded_batch(raw: bytes | bytearray | memoryview | str) -> list[ForwardedDelivery]:
    """Decode a message of forwarded deliveries; raises only :class:`EventValidationError`."""
    reason = "invalid_forward"
    try:
        return _batch_decoder.decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError, ValueError, TypeError) as exc:
        raise EventValidationError(reason, str(exc)) from None
