"""The model version manifest: what a published two-tower version is, shared by the trainer and serving.

A version is written once by a full update (every embedding row, the item vectors, the frozen towers'
weights) and then refreshed by the incremental trainer every few seconds (only the touched rows, and
the manifest's ``last_publish_ms`` / ``samples_seen`` / ``evaluation``). ``dense_checksum`` is the
checksum of the frozen tower weights (:func:`filters.towers.dense_checksum`); the trainer asserts it at
every publish, so a version's towers never change after it was created.

>>> m = Manifest(version="v000002", model_id="full-2026-11-30", dense_checksum="ab", dim=32,
...              category_dim=16, hidden=64, temperature=0.05, created_ms=1, parent="v000001")
>>> decode_manifest(encode_manifest(m)) == m
True
>>> next_version("v000002"), next_version(None)
('v000003', 'v000001')
"""

from __future__ import annotations

import msgspec

__all__ = ["Manifest", "decode_manifest", "encode_manifest", "next_version"]


class Manifest(msgspec.Struct, kw_only=True):
    """One model version (JSON in ``rs2:model:<version>:manifest``)."""

    version: str
    model_id: str  # the full update that created it, e.g. "full-2026-11-30" or "init"
    dense_checksum: str
    dim: int
    category_dim: int
    hidden: int
    temperature: float
    created_ms: int
    parent: str | None = None  # the version the full update started from
    last_publish_ms: int = 0
    publishes: int = 0
    samples_seen: int = 0  # positives trained into this version (full update + incremental)
    newest_event_ms: int = 0  # the newest sample ts trained into it (event time)
    # samples partition -> the newest record ts read from it before this publish (canary heartbeats included):
    # everything that partition carried up to that event time is in this version
    through_ms: dict[int, int] = msgspec.field(default_factory=dict)
    user_rows: int = 0
    item_rows: int = 0
    evaluation: dict[str, float | None] = msgspec.field(default_factory=dict)


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Manifest).decode


def encode_manifest(m: Manifest) -> bytes:
    """JSON bytes of ``m``."""
    return _encode(m)


def decode_manifest(raw: bytes) -> Manifest:
    """The manifest in ``raw`` (raises ``msgspec.ValidationError`` on a malformed one)."""
    return _decode(raw)


def next_version(current: str | None) -> str:
    """The version id after ``current``: ``v`` + six digits, so versions sort as strings."""
    n = int(current[1:]) + 1 if current else 1
    return f"v{n:06d}"
