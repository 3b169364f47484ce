"""Records of the samples topic (docs/samples.md, "Records"): one sample per record (a JSON object) or a
batched record (a JSON array of samples, all on the record's partition, in emission order).

The worker packs a batch's samples per partition (``join.samples_per_record``): one Kafka record per
sample capped the trainer's reading at ~44k samples/s (233k batched; docs/learning.md); the worker's
throughput did not change (docs/performance.md). Every reader goes through :func:`decode_samples`,
which takes both shapes, so single-sample records (an older worker, ``samples_per_record = 1``, another
producer) keep working.

>>> s = Sample(kind="positive", sample_id="s1-e1", user_id="u1", item_id="i9", request_id=None,
...            impression_ts=1, ts=2, category=None, author_id=None, history=[], alpha=1.0)
>>> decode_samples(encode_sample(s)) == [s], decode_samples(b"[" + encode_sample(s) + b"]") == [s]
(True, True)
>>> decode_samples(b"[]")
[]
>>> try:
...     decode_samples(b'{"kind":"positive"}')
... except msgspec.DecodeError as exc:
...     print(type(exc).__name__)
ValidationError
"""

from __future__ import annotations

import msgspec

from filters.labels import Sample

__all__ = ["decode_samples", "encode_sample"]

_decoder = msgspec.json.Decoder(Sample | list[Sample])
encode_sample = msgspec.json.Encoder().encode


def decode_samples(raw: bytes | bytearray | memoryview | None) -> list[Sample]:
    """The samples of one record, in order. Raises :class:`msgspec.DecodeError` (a
    :class:`msgspec.ValidationError` for valid JSON that is not samples) when the record is not one
    sample or an array of them: readers count such a record as undecodable, whole."""
    got = _decoder.decode(raw if raw is not None else b"")
    return got if isinstance(got, list) else [got]
