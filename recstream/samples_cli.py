"""``recstream samples tail`` and ``recstream samples export``: read the training samples topic.

Both read ``kafka.samples_topic`` without a consumer group (:mod:`infra.topic_reader`): nothing is
committed, the worker and the trainer are unaffected. Errors (unreachable broker, missing topic, bad
``--since``) print ``error: ...`` on stderr and exit non-zero.

>>> s = Sample(kind="impression", sample_id="s1-x", user_id="u1", item_id="i9", request_id=None,
...            impression_ts=1764583200000, ts=1764583200000, category=None, author_id=None,
...            history=["i1", "i2"], alpha=1.0, labels={"click": 1, "like": 1, "share": 0}, position=3)
>>> format_line(s)
'2025-12-01T10:00:00.000Z  impression  user=u1  item=i9  labels=click,like  history=2  pos=3'
>>> parse_when("--since", "2025-12-01T10:00"), parse_when("--until", "1764583200000")
(1764583200000, 1764583200000)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import click
import msgspec
from tqdm import tqdm

from filters.labels import Sample
from filters.sample_records import decode_samples, encode_sample
from infra.errors import InputError
from infra.topic_reader import TopicRecord, read_between, read_last
from recstream.cli_support import friendly_errors, settings_from_context
from recstream.data_cli import parse_start

__all__ = ["format_line", "newest_samples", "parse_when", "samples"]

_KINDS = click.Choice(["positive", "impression"])
_TAIL_MAX_PER_PARTITION = 1_000_000  # --kind widens the tail read up to this many records per partition


def parse_when(option: str, text: str) -> int:
    """``--since`` / ``--until``: epoch milliseconds or an ISO-8601 date/time (naive = UTC) → epoch ms."""
    try:
        return parse_start(text)
    except InputError:
        msg = f"{option} {text!r}: expected epoch milliseconds or an ISO date/time like 2026-12-01T10:00"
        raise InputError(msg) from None


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _wanted(s: Sample, kind: str | None) -> bool:
    """A sample of ``kind`` (any training kind when None); canary heartbeats are never shown or exported."""
    return s.kind == kind if kind is not None else s.kind != "canary"


def format_line(s: Sample) -> str:
    """One compact human line: impression time, kind, user, item, labels set (or ``-``), history length."""
    labels = ",".join(a for a, v in (s.labels or {}).items() if v) or "-"
    pos = "" if s.position is None else f"  pos={s.position}"
    return (f"{_iso(s.impression_ts)}  {s.kind:<10}  user={s.user_id}  item={s.item_id}  labels={labels}  "
            f"history={len(s.history)}{pos}")


def _decode(rec: TopicRecord) -> Sequence[Sample | None]:
    """The samples of one record (one or a batched array), or ``[None]`` for an undecodable record."""
    try:
        return decode_samples(rec.value)
    except msgspec.DecodeError:
        return [None]


def _covered(records: list[TopicRecord], per_partition: int, oldest_kept_ts: int) -> bool:
    """Whether no unread (older) record could be newer than ``oldest_kept_ts``: every partition either
    returned fewer than ``per_partition`` records (read whole) or reaches back to that timestamp."""
    firsts: dict[int, int] = {}
    counts: dict[int, int] = {}
    for r in records:  # sorted by timestamp: the first seen per partition is its oldest
        firsts.setdefault(r.partition, r.timestamp_ms)
        counts[r.partition] = counts.get(r.partition, 0) + 1
    return all(counts[p] < per_partition or firsts[p] <= oldest_kept_ts for p in counts)


def newest_samples(read: Callable[[int], list[TopicRecord]], n: int,
                   kind: str | None) -> tuple[list[Sample], int]:
    """The newest ``n`` samples of ``kind`` (oldest first) and how many undecodable records lie among them
    (from the oldest one shown on; all of them when fewer than ``n`` were found).

    ``read(k)`` returns the last ``k`` records of each partition (sorted by timestamp); ``k`` grows until
    the newest ``n`` matches are certain (a rare ``--kind`` needs a deeper read).
    """
    k = n
    while True:
        records = read(k)
        entries = [(r, s) for r in records for s in _decode(r)]  # a batched record holds many samples
        hits = [i for i, (_, s) in enumerate(entries) if s is not None and _wanted(s, kind)][-n:]
        full = len(hits) == n
        if (not records or (full and _covered(records, k, entries[hits[0]][0].timestamp_ms))
                or k >= _TAIL_MAX_PER_PARTITION or _covered(records, k, -1)):
            bad = sum(1 for _, s in entries[hits[0] if full else 0:] if s is None)
            return [s for s in (entries[i][1] for i in hits) if s is not None], bad
        k = min(k * 4, _TAIL_MAX_PER_PARTITION)


@click.group()
def samples() -> None:
    """Read the training samples topic (no consumer group: nothing is committed)."""


@samples.command()
@click.option("--kind", type=_KINDS, default=None, help="Only samples of this kind.")
@click.option("-n", "--n", "n", default=20, show_default=True, type=click.IntRange(min=1),
              help="How many samples to show.")
@click.option("--connect-timeout", default=5.0, show_default=True, help="Seconds for the broker check.")
@click.pass_context
@friendly_errors
def tail(ctx: click.Context, kind: str | None, n: int, connect_timeout: float) -> None:
    """Print the newest N samples, one line each, oldest first."""
    settings = settings_from_context(ctx)
    topic = settings.kafka.samples_topic

    def read(k: int) -> list[TopicRecord]:
        return read_last(settings, topic, k, connect_timeout=connect_timeout)

    shown, bad = newest_samples(read, n, kind)
    for s in shown:
        click.echo(format_line(s))
    if bad:
        click.echo(f"skipped {bad} undecodable record(s) on {topic}", err=True)
    if not shown:
        click.echo(f"no {kind + ' ' if kind else ''}samples on {topic}", err=True)


def _write_jsonl(records: Iterable[TopicRecord], out: BinaryIO, kind: str | None,
                 bar: tqdm[Any]) -> tuple[int, int]:
    """Write the decodable samples of ``kind`` as JSONL; returns (written, undecodable)."""
    written = bad = 0
    for rec in records:
        bar.update()
        for s in _decode(rec):
            if s is None:
                bad += 1
            elif _wanted(s, kind):
                out.write(encode_sample(s) + b"\n")
                written += 1
    return written, bad


@samples.command()
@click.option("--since", "since", required=True, metavar="WHEN", help="Epoch ms or ISO date/time (naive = UTC).")
@click.option("--until", "until", required=True, metavar="WHEN", help="Exclusive end; same formats.")
@click.option("--kind", type=_KINDS, default=None, help="Only samples of this kind.")
@click.option("--connect-timeout", default=5.0, show_default=True, help="Seconds for the broker check.")
@click.argument("file", metavar="FILE")
@click.pass_context
@friendly_errors
def export(ctx: click.Context, since: str, until: str, kind: str | None, connect_timeout: float, file: str) -> None:
    """Write the samples with a record timestamp in [--since, --until) to FILE as JSONL (- = stdout)."""
    since_ms, until_ms = parse_when("--since", since), parse_when("--until", until)
    if since_ms >= until_ms:
        msg = f"--since ({_iso(since_ms)}) must be before --until ({_iso(until_ms)})"
        raise InputError(msg)
    settings = settings_from_context(ctx)
    records = read_between(settings, settings.kafka.samples_topic, since_ms, until_ms,
                           connect_timeout=connect_timeout)
    to_stdout = file == "-"
    with tqdm(desc="export", unit="rec", disable=True if to_stdout else None) as bar:
        if to_stdout:
            out = click.get_binary_stream("stdout")
            written, bad = _write_jsonl(records, out, kind, bar)
            out.flush()
        else:
            written, bad = _write_file(Path(file), records, kind, bar)
    skipped = f" ({bad} undecodable record(s) skipped)" if bad else ""
    click.echo(f"exported {written} samples to {'stdout' if to_stdout else file}{skipped}", err=True)


def _write_file(path: Path, records: Iterable[TopicRecord], kind: str | None,
                bar: tqdm[Any]) -> tuple[int, int]:
    """Write to a temporary file beside ``path`` and rename it on success (no half-written FILE)."""
    partial = path.with_name(path.name + ".partial")
    try:
        with open(partial, "wb") as out:
            result = _write_jsonl(records, out, kind, bar)
        os.replace(partial, path)
    except OSError as exc:
        msg = f"cannot write {path}: {exc.strerror or exc}"
        raise InputError(msg) from None
    finally:
        partial.unlink(missing_ok=True)
    return result

