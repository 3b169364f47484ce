"""``recstream samples tail`` / ``export`` against the session's real broker, on a fresh samples topic per test.

Records get their timestamp from the producer's clock at ``produce()`` time, so the export window is
measured around the batch of interest (with a few ms of gap to the batches before and after it).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner, Result

from filters.labels import Sample
from infra.settings import Settings
from infra.topics import ensure_topics
from recstream.cli import main
from stream.producer import EventProducer

pytestmark = pytest.mark.integration

LABELS = ("click", "like", "collect", "share", "comment")


@pytest.fixture
def settings(services: object) -> Settings:
    """The session settings with a fresh, empty samples topic."""
    base: Settings = services.settings  # type: ignore[attr-defined]
    kafka = base.kafka.model_copy(update={"samples_topic": f"samples-{uuid.uuid4().hex[:8]}"})
    s = base.model_copy(update={"kafka": kafka})
    ensure_topics(s)
    return s


def make_sample(i: int, kind: str, user: str) -> Sample:
    labels = {a: 0 for a in LABELS} | {"click": int(i % 2 == 0), "like": int(i % 3 == 0)}
    return Sample(kind=kind, sample_id=f"s1-{i:04d}", user_id=user, item_id=f"i{i}",  # type: ignore[arg-type]
                  request_id=f"r{i}" if i % 2 else None, impression_ts=1_764_583_200_000 + i * 1000,
                  ts=1_764_583_200_000 + i * 1000 + 500, category="tech", author_id=f"a{i % 3}",
                  history=[f"h{k}" for k in range(i % 4)], alpha=0.5,
                  labels=labels if kind == "impression" else None, position=i if kind == "impression" else None)


def produce(settings: Settings, records: list[Sample | bytes], gap_s: float = 0.003) -> list[bytes]:
    """Send each sample (or raw bytes) keyed by its user, ``gap_s`` apart; returns the values sent."""
    values: list[bytes] = []
    with EventProducer(settings) as producer:
        for rec in records:
            value = rec if isinstance(rec, bytes) else msgspec.json.encode(rec)
            key = b"bad" if isinstance(rec, bytes) else rec.user_id.encode()
            producer.send_raw(settings.kafka.samples_topic, key, value)
            values.append(value)
            time.sleep(gap_s)  # distinct, increasing record timestamps
        producer.flush(30)
    return values


def run(settings: Settings, *args: str) -> Result:
    return CliRunner().invoke(main, ["samples", *args], obj={"settings": settings})


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def items(result: Result) -> list[str]:
    return [part.removeprefix("item=") for line in result.stdout.splitlines()
            for part in line.split() if part.startswith("item=")]


def test_tail_newest_n_with_kind_filter(settings: Settings) -> None:
    users = ["ua", "ub", "uc", "ud"]
    batch: list[Sample | bytes] = [make_sample(i, "positive" if i % 3 == 0 else "impression", users[i % 4])
                                   for i in range(12)]
    batch.insert(5, b"{broken")
    produce(settings, batch)

    last3 = run(settings, "tail", "-n", "3")
    assert last3.exit_code == 0, last3.output
    assert items(last3) == ["i9", "i10", "i11"]  # newest three, oldest first
    assert "skipped" not in last3.stderr  # the broken record is older than the newest three
    line = last3.stdout.splitlines()[1]
    assert line.split()[:2] == ["2025-12-01T10:00:10.000Z", "impression"]
    assert "user=uc" in line and "labels=click" in line and "history=2" in line and "pos=10" in line

    pos = run(settings, "tail", "--kind", "positive", "-n", "2")
    assert pos.exit_code == 0, pos.output
    assert items(pos) == ["i6", "i9"]
    assert all(" positive " in f" {ln} " and "labels=-" in ln for ln in pos.stdout.splitlines())

    imps = run(settings, "tail", "--kind", "impression", "--n", "100")
    assert imps.exit_code == 0, imps.output
    assert items(imps) == [f"i{i}" for i in range(12) if i % 3]
    assert "skipped 1 undecodable record(s)" in imps.stderr


def test_tail_kind_filter_reads_deeper_than_n(settings: Settings) -> None:
    """The newest positives sit behind many impressions of the same user (same partition)."""
    produce(settings, [make_sample(i, "positive" if i < 2 else "impression", "ua") for i in range(10)])
    result = run(settings, "tail", "--kind", "positive", "-n", "2")
    assert result.exit_code == 0, result.output
    assert items(result) == ["i0", "i1"]


def test_export_writes_exactly_the_window(settings: Settings, tmp_path: Path) -> None:
    before = produce(settings, [make_sample(i, "impression", f"u{i}") for i in range(3)])
    time.sleep(0.02)
    since = now_ms()
    inside = produce(settings, [make_sample(10 + i, "positive" if i % 2 else "impression", f"u{i}")
                                for i in range(6)])
    produce(settings, [make_sample(30, "canary", "__canary__.0.0")])  # a heartbeat: never exported
    bad = produce(settings, [b"not json at all"])
    until = now_ms() + 1
    time.sleep(0.02)
    produce(settings, [make_sample(20 + i, "positive", f"u{i}") for i in range(3)])

    out = tmp_path / "samples.jsonl"
    result = run(settings, "export", "--since", str(since), "--until", str(until), str(out))
    assert result.exit_code == 0, result.output
    assert sorted(out.read_bytes().splitlines()) == sorted(inside)
    assert result.stderr.strip().splitlines()[-1] == (
        f"exported 6 samples to {out} (1 undecodable record(s) skipped)")
    assert bad and not list(tmp_path.glob("*.partial"))

    positives = run(settings, "export", "--kind", "positive", "--since", str(since), "--until", str(until), "-")
    assert positives.exit_code == 0, positives.output
    want = [v for v in inside if b'"kind":"positive"' in v]
    assert len(want) == 3 and sorted(positives.stdout.encode().splitlines()) == sorted(want)
    assert "exported 3 samples to stdout" in positives.stderr

    iso = run(settings, "export", "--since", "2000-01-01T00:00", "--until", str(until), "-")
    assert iso.exit_code == 0, iso.output
    assert sorted(iso.stdout.encode().splitlines()) == sorted(before + inside)


def test_batched_records_are_read_sample_by_sample(settings: Settings, tmp_path: Path) -> None:
    """The worker packs samples into JSON arrays (join.samples_per_record): tail and export see each sample,
    interleaved with single-sample records in record order."""
    first = [make_sample(i, "positive" if i % 2 else "impression", "ua") for i in range(4)]
    last = [make_sample(5 + i, "impression", "ua") for i in range(3)]
    since = now_ms()
    produce(settings, [b"[" + b",".join(msgspec.json.encode(s) for s in first) + b"]",
                       make_sample(4, "positive", "ua"),
                       b"[" + b",".join(msgspec.json.encode(s) for s in last) + b"]"])
    until = now_ms() + 1

    tail = run(settings, "tail", "-n", "5")
    assert tail.exit_code == 0, tail.output
    assert items(tail) == ["i3", "i4", "i5", "i6", "i7"]  # the newest five span all three records
    positives = run(settings, "tail", "--kind", "positive", "-n", "10")
    assert items(positives) == ["i1", "i3", "i4"]

    out = tmp_path / "batched.jsonl"
    result = run(settings, "export", "--since", str(since), "--until", str(until), str(out))
    assert result.exit_code == 0, result.output
    got = [msgspec.json.decode(line, type=Sample) for line in out.read_bytes().splitlines()]
    by_id = sorted(got, key=lambda x: x.sample_id)  # the arrays and the single record sit on two partitions
    assert by_id == [*first, make_sample(4, "positive", "ua"), *last]
    assert f"exported 8 samples to {out}" in result.stderr


def one_error_line(result: Result) -> str:
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def test_missing_topic_is_one_error_line(settings: Settings, tmp_path: Path) -> None:
    kafka = settings.kafka.model_copy(update={"samples_topic": f"no-such-{uuid.uuid4().hex[:8]}"})
    missing = settings.model_copy(update={"kafka": kafka})
    assert "does not exist" in one_error_line(run(missing, "tail"))
    out = tmp_path / "x.jsonl"
    assert "does not exist" in one_error_line(run(missing, "export", "--since", "0", "--until", "1", str(out)))
    assert not out.exists() and not list(tmp_path.iterdir())


def test_unreachable_broker_is_one_fast_error_line(settings: Settings, free_port: Callable[[], int],
                                                   tmp_path: Path) -> None:
    kafka = settings.kafka.model_copy(update={"bootstrap": f"127.0.0.1:{free_port()}"})
    down = settings.model_copy(update={"kafka": kafka})
    started = time.monotonic()
    assert "cannot reach Kafka" in one_error_line(run(down, "tail"))  # default --connect-timeout 5
    assert time.monotonic() - started < 10
    started = time.monotonic()
    line = one_error_line(run(down, "export", "--connect-timeout", "1", "--since", "2026-12-01T10:00",
                              "--until", "2026-12-01T11:00", str(tmp_path / "x.jsonl")))
    assert "cannot reach Kafka" in line and time.monotonic() - started < 5
    assert not list(tmp_path.iterdir())


def test_bad_window_arguments(settings: Settings) -> None:
    assert "--since 'yesterday'" in one_error_line(run(settings, "export", "--since", "yesterday",
                                                       "--until", "1", "-"))
    assert "must be before --until" in one_error_line(run(settings, "export", "--since", "2026-12-01T11:00",
                                                          "--until", "2026-12-01T10:00", "-"))
