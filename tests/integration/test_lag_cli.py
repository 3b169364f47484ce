"""``recstream lag`` against the real broker: offsets and seconds per partition, idle partitions at 0,
``--json``; with Kafka unreachable one clear error line and a non-zero exit (no librdkafka flood)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from filters.events import Event
from infra.settings import Settings, to_env
from infra.topics import ensure_topics
from stream.producer import EventProducer
from tests.conftest import ServicePair, free_ports, private_topics

pytestmark = pytest.mark.integration


def _lag(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **to_env(settings)}
    return subprocess.run([sys.executable, "-m", "recstream.cli", "lag", *args], capture_output=True, text=True,
                          env=env, timeout=120, check=False)


def test_unreachable_kafka_is_one_error_line(kafka_service: ServicePair) -> None:
    dead = free_ports(1)[0]
    base = kafka_service.settings
    settings = base.model_copy(update={"kafka": base.kafka.model_copy(update={"bootstrap": f"127.0.0.1:{dead}"})})
    out = _lag(settings)
    lines = (out.stdout + out.stderr).strip().splitlines()
    assert out.returncode == 1
    assert lines == [f"error: cannot reach Kafka at 127.0.0.1:{dead} (Failed to get metadata: Local: Broker "
                     "transport failure); start it with `recstream infra up` or set RECSTREAM_KAFKA_BOOTSTRAP"]


def test_offsets_and_seconds_per_partition(kafka_service: ServicePair) -> None:
    settings = private_topics(kafka_service.settings, "lag", producer={"batch_max_events": 1})
    ensure_topics(settings)
    with EventProducer(settings) as producer:  # every event to one user: one partition behind, others idle
        for k in range(5):
            producer.send(Event(event_id=f"e{k}", type="click", user_id="u1", item_id="i1",
                                ts=int(time.time() * 1000)))
    time.sleep(1.5)
    out = _lag(settings, "--json")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    events = [r for r in rows if r["topic"] == settings.kafka.events_topic]
    assert len(events) == settings.kafka.partitions
    behind = [r for r in events if r["lag"]]
    assert [r["lag"] for r in behind] == [5] and behind[0]["lag_seconds"] >= 1.0
    idle = [r for r in rows if not r["lag"]]
    assert idle and all(r["lag_seconds"] == 0 and r["end"] >= 0 for r in idle)
    table = _lag(settings)
    assert table.returncode == 0 and "total lag: 5 messages, oldest" in table.stdout


def test_serve_exports_the_lag_of_a_group_whose_workers_are_down(kafka_service: ServicePair) -> None:
    import re
    import urllib.request

    settings = private_topics(kafka_service.settings, "lsv", producer={"batch_max_events": 1})
    group, topic = settings.worker.app_id, settings.kafka.events_topic
    ensure_topics(settings)
    with EventProducer(settings) as producer:
        for k in range(3):
            producer.send(Event(event_id=f"e{k}", type="click", user_id="u2", item_id="i1",
                                ts=int(time.time() * 1000)))
    port = free_ports(1)[0]
    proc = subprocess.Popen([sys.executable, "-m", "recstream.cli", "lag", "--serve", str(port), "--watch", "1"],
                            env={**os.environ, **to_env(settings)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline, found = time.monotonic() + 30, []
        while time.monotonic() < deadline and not found:
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
                found = re.findall(rf'^recstream_group_lag_messages\{{group="{group}",partition="(\d+)",'
                                   rf'topic="{topic}"\}} 3\.0$', text, re.M)
            except OSError:
                pass
            time.sleep(0.5)
        assert len(found) == 1
        assert "recstream_kafka_up 1.0" in text  # the read answered
    finally:
        proc.terminate()
        proc.wait(10)


def test_serve_outlives_a_kafka_outage_and_says_so(kafka_service: ServicePair) -> None:
    """With Kafka unreachable `lag --serve` keeps serving, with ``recstream_kafka_up 0`` (the alert
    RecstreamKafkaUnreachable reads it) and one warning line, not one per refresh."""
    import urllib.request

    dead, port = free_ports(2)
    base = kafka_service.settings
    settings = base.model_copy(update={"kafka": base.kafka.model_copy(update={"bootstrap": f"127.0.0.1:{dead}"})})
    proc = subprocess.Popen([sys.executable, "-m", "recstream.cli", "lag", "--serve", str(port), "--watch", "0.5"],
                            env={**os.environ, **to_env(settings)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        time.sleep(25)  # several refreshes (each read gives up after 5 s), all failing
        assert proc.poll() is None, "the exporter exited on a Kafka outage"
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert "recstream_kafka_up 0.0" in text
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    warnings = [line for line in out.splitlines() if "recstream_kafka_up 0" in line]
    assert len(warnings) == 1, out
