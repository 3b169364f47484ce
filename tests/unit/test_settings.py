"""Settings precedence: defaults < recstream.toml < environment; bad values give one ConfigError."""

from __future__ import annotations

from pathlib import Path

import pytest

from filters.sequences import sequence_capacities
from infra.errors import ConfigError
from infra.settings import Settings, load_settings, to_env


def test_defaults() -> None:
    s = Settings()
    assert s.kafka.bootstrap == "127.0.0.1:9092"
    assert s.redis.effective_url == "redis://127.0.0.1:6479/0" and s.redis.managed


def test_toml_then_env_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = tmp_path / "recstream.toml"
    toml.write_text('[kafka]\npartitions = 4\nport = 19000\n[bloom]\nfpr = 0.02\n')
    monkeypatch.setenv("RECSTREAM_CONFIG", str(toml))
    assert load_settings().kafka.partitions == 4
    assert load_settings().kafka.bootstrap == "127.0.0.1:19000"
    monkeypatch.setenv("RECSTREAM_KAFKA_PARTITIONS", "12")
    monkeypatch.setenv("RECSTREAM_REDIS_URL", "redis://10.0.0.1:6380/2")
    s = load_settings()
    assert (s.kafka.partitions, s.bloom.fpr) == (12, 0.02)
    assert s.redis.effective_url == "redis://10.0.0.1:6380/2" and not s.redis.managed


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"RECSTREAM_KAFKA_PARTITIONS": "zero"}, "kafka.partitions"),
        ({"RECSTREAM_BLOOM_FPR": "0.7"}, "bloom.fpr"),
        ({"RECSTREAM_LASTN_CAPACITY": '{"click": 0}'}, "lastn.capacity"),
    ],
)
def test_bad_values_are_one_readable_error(
    env: dict[str, str], fragment: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RECSTREAM_CONFIG", str(tmp_path / "absent.toml"))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError, match=fragment):
        load_settings()


def test_to_env_round_trips(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RECSTREAM_CONFIG", str(tmp_path / "absent.toml"))
    original = Settings(kafka={"port": 19092, "partitions": 3}, lastn={"capacity": {"click": 7}}, home=tmp_path)
    for k, v in to_env(original).items():
        monkeypatch.setenv(k, v)
    assert Settings() == original


def test_unknown_lastn_actions_are_refused_by_the_event_contract() -> None:
    # settings (the ground floor) cannot know the event types; the sequence plan checks them
    with pytest.raises(ConfigError, match="unknown actions"):
        sequence_capacities(Settings(lastn={"capacity": {"buy": 3}}).lastn)
