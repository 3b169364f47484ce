"""``recstream full-update`` and ``recstream model …`` against the real Redis, and the trainer following
a version switch (its Kafka source replaced by an in-memory one of the same interface)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import msgspec
import pytest
import redis
from click.testing import CliRunner
from prometheus_client import REGISTRY

from filters.events import Event
from filters.labels import canary_record
from filters.model_store import ModelStore
from infra.settings import Settings
from online_learning.source import SampleRecord
from online_learning.trainer import Trainer
from recstream.cli import main
from tests.conftest import ServicePair
from tests.learning_data import stream

pytestmark = pytest.mark.integration
DAY = "2023-11-14"  # tests.learning_data starts at 1_700_000_000_000 = 2023-11-14 22:13:20 UTC


@pytest.fixture
def settings(redis_service: ServicePair, redis_client: redis.Redis, tmp_path: Path) -> Settings:
    base = redis_service.settings
    return base.model_copy(update={"home": tmp_path, "learning": base.learning.model_copy(
        update={"max_users": 100, "max_items": 300, "batch_size": 64, "min_count": 1, "metrics_port": 0})})


def _cli(settings: Settings, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), obj={"settings": settings})
    return result.exit_code, result.output


def _export(path: Path, n: int = 1200) -> Path:
    path.write_bytes(b"".join(msgspec.json.encode(s) + b"\n" for s in stream(n, seed=21, negatives=0.2)))
    return path


def test_full_update_is_idempotent_and_versions_can_be_listed_shown_and_rolled_back(
        settings: Settings, tmp_path: Path) -> None:
    export = _export(tmp_path / "samples.jsonl")
    code, out = _cli(settings, "full-update", "--day", DAY, "--from", str(export))
    assert code == 0 and "published v000002" in out and "1,200 positives" in out, out
    code, out = _cli(settings, "full-update", "--day", DAY, "--from", str(export))
    assert code == 0 and "nothing to do" in out
    store = ModelStore(redis.Redis.from_url(settings.redis.effective_url), settings.redis.shards)
    init, full = store.manifest("v000001"), store.manifest("v000002")
    assert full.parent == "v000001" and full.dense_checksum != init.dense_checksum  # the towers trained
    code, out = _cli(settings, "model", "list")
    assert code == 0 and "* v000002" in out and "  v000001" in out
    assert _cli(settings, "model", "rollback", "v000001") == (0, "serving v000001\n")
    code, out = _cli(settings, "model", "show")
    assert code == 0 and json.loads(out)["version"] == "v000001"
    code, out = _cli(settings, "model", "rollback", "v000042")
    assert code == 1 and out.count("\n") == 1 and "not kept" in out


def test_full_update_with_a_bad_day_or_file_is_one_line(settings: Settings, tmp_path: Path) -> None:
    assert _cli(settings, "full-update", "--day", "30/11/2026", "--from", "x")[1].startswith("error: --day")
    code, out = _cli(settings, "full-update", "--day", DAY, "--from", str(tmp_path / "missing.jsonl"))
    assert code == 1 and out == f"error: samples file {tmp_path / 'missing.jsonl'} not found\n"


class _Source:
    """The trainer's source interface over a list (no Kafka: the version switch is what is tested)."""

    def __init__(self, values: list[bytes]) -> None:
        self.records = [SampleRecord(0, k, v) for k, v in enumerate(values)]
        self.committed: dict[int, int] = {}

    def poll(self, max_records: int, timeout_s: float) -> list[SampleRecord]:
        out, self.records = self.records[:max_records], self.records[max_records:]
        return out

    def commit(self, next_offsets: Mapping[int, int]) -> None:
        self.committed.update(next_offsets)


def test_trainer_restarts_its_chain_from_a_new_full_version(settings: Settings, tmp_path: Path) -> None:
    client = redis.Redis.from_url(settings.redis.effective_url)
    source = _Source([msgspec.json.encode(s) for s in stream(500, seed=22)])
    trainer = Trainer(settings, client, source)  # type: ignore[arg-type]
    trainer.handle(source.poll(500, 0))
    assert trainer.publish() > 0 and trainer.version == "v000001"
    assert source.committed == {0: 500}
    assert _cli(settings, "full-update", "--day", DAY, "--from", str(_export(tmp_path / "s.jsonl")))[0] == 0
    trainer.publish()  # notices the pointer at its next publish
    assert trainer.version == "v000002"
    assert trainer.learner.model.dense_checksum() == ModelStore(client, settings.redis.shards).manifest(
        "v000002").dense_checksum


def _trainer_samples(kind: str, outcome: str) -> float:
    value = REGISTRY.get_sample_value("recstream_trainer_samples_total", {"kind": kind, "outcome": outcome})
    return value or 0.0


def test_canary_heartbeats_are_never_trained_but_move_the_published_through_time(settings: Settings) -> None:
    client = redis.Redis.from_url(settings.redis.effective_url)
    positives = stream(300, seed=23)
    newest = positives[-1].ts
    beat = canary_record(Event(event_id="c1", type="click", user_id="__canary__.0.0", item_id="x", ts=newest + 5))
    source = _Source([msgspec.json.encode(s) for s in [*positives, beat, beat]])
    trainer = Trainer(settings, client, source)  # type: ignore[arg-type]
    before = {(k, o): _trainer_samples(k, o) for k, o in (("canary", "heartbeat"), ("impression", "evaluated"))}
    trainer.handle(source.poll(1000, 0))
    trainer.publish()
    assert _trainer_samples("canary", "heartbeat") == before["canary", "heartbeat"] + 2  # both, no dedup
    assert _trainer_samples("impression", "evaluated") == before["impression", "evaluated"]
    manifest = ModelStore(client, settings.redis.shards).manifest(trainer.version)
    assert manifest.samples_seen == trainer.learner.trained == len(positives)
    assert manifest.through_ms == {0: newest + 5} and manifest.newest_event_ms == newest
    assert source.committed == {0: len(positives) + 2}
