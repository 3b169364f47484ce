"""Every command that needs Kafka or Redis, run with them unreachable: one ``error:`` line naming what
cannot be reached and how to fix it, a non-zero exit, no stack trace and no librdkafka flood."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from infra.settings import Settings, to_env
from tests.conftest import ServicePair, free_ports

pytestmark = pytest.mark.integration

COMMANDS = [
    ("worker",),
    ("trainer",),
    ("lag",),
    ("samples", "tail"),
    ("samples", "export", "--since", "2026-11-01", "--until", "2026-11-02", "-"),
    ("full-update", "--day", "2026-11-30"),
    ("produce", "EVENTS"),
    ("model", "list"),
    ("model", "show"),
    ("model", "rollback", "v000001"),
    ("canary", "--rounds", "1", "--metrics-port", "0"),
    ("rebuild",),
]  # `recstream serve` stays up with Redis down and answers 503, /readyz false (tests/integration/test_http.py)
REDIS_ONLY = {"model"}  # with Redis up these run fine without Kafka


def _run(settings: Settings, args: tuple[str, ...], tmp: Path) -> subprocess.CompletedProcess[str]:
    events = tmp / "events.jsonl"
    events.write_text('{"event_id":"e1","type":"click","user_id":"u1","item_id":"i1","ts":1700000000000}\n')
    argv = [str(events) if a == "EVENTS" else a for a in args]
    env = {**os.environ, **to_env(settings)}
    return subprocess.run([sys.executable, "-m", "recstream.cli", *argv], capture_output=True, text=True,
                          env=env, timeout=90, check=False)


CASES = [(args, False) for args in COMMANDS] + [(args, True) for args in COMMANDS if args[0] not in REDIS_ONLY]


@pytest.mark.parametrize(("args", "redis_up"), CASES,
                         ids=[" ".join(a) + (" kafka-down" if up else " both-down") for a, up in CASES])
def test_one_clear_error_line(redis_service: ServicePair, tmp_path: Path, args: tuple[str, ...],
                              redis_up: bool) -> None:
    kafka_port, redis_port = free_ports(2)
    base = redis_service.settings
    redis_url = redis_service.redis_url if redis_up else f"redis://:pw@127.0.0.1:{redis_port}/0"
    settings = base.model_copy(update={
        "home": tmp_path,
        "kafka": base.kafka.model_copy(update={"bootstrap": f"127.0.0.1:{kafka_port}"}),
        "redis": base.redis.model_copy(update={"url": redis_url}),
        "worker": base.worker.model_copy(update={"metrics_port": 0}),
        "learning": base.learning.model_copy(update={"metrics_port": 0})})
    out = _run(settings, args, tmp_path)
    lines = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    assert out.returncode != 0
    assert len(lines) == 1 and lines[0].startswith("error: cannot reach "), lines[:5]
    assert "pw@" not in lines[0] and "Traceback" not in out.stderr
    assert ("Redis" in lines[0]) or ("Kafka" in lines[0] and str(kafka_port) in lines[0])
