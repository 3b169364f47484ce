"""Kafka SASL against a real SASL listener: a private broker with SASL_PLAINTEXT/PLAIN (what `infra up`
starts when the settings ask for it); the worker (aiokafka through Faust), the producer, the admin and lag
clients (librdkafka) authenticate, and the features equal the reference. A wrong password fails in one
clear line, without the secret."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import SecretStr

from infra import kafka_broker
from infra.settings import Settings
from infra.topics import ensure_topics
from recstream.cli import main
from stream.lag import LagProbe
from stream.worker_process import WorkerProcess
from tests.conftest import ServicePair, free_ports
from tests.pipeline_check import assert_state_matches, make_stream, private_pipeline, produce

pytestmark = pytest.mark.integration
PASSWORD = "k4fka-Pa55"


@pytest.fixture
def sasl(redis_service: ServicePair, redis_client: object, tmp_path: Path) -> Iterator[Settings]:
    base = private_pipeline(redis_service.settings)
    port, controller = free_ports(2)
    settings = base.model_copy(update={"home": tmp_path, "kafka": base.kafka.model_copy(update={
        "port": port, "controller_port": controller, "bootstrap": f"127.0.0.1:{port}",
        "security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "sasl_username": "recstream",
        "sasl_password": SecretStr(PASSWORD)})})
    kafka_broker.start(settings)
    try:
        ensure_topics(settings)
        yield settings
    finally:
        kafka_broker.stop(settings)


@pytest.mark.timeout(300)
def test_the_pipeline_authenticates_with_sasl_and_a_wrong_password_fails_in_one_line(sasl: Settings) -> None:
    events, meta = make_stream(seed=11, n=3000)
    probe = LagProbe(sasl)
    produce(sasl, [], meta)
    with WorkerProcess(sasl, sasl.home / "logs" / "worker.log"):
        probe.wait_until_caught_up(120)  # item metadata first: events without a category take it from there
        produce(sasl, events)
        probe.wait_until_caught_up(120)
    assert_state_matches(sasl, events)  # read back through the SASL listener too
    assert PASSWORD not in (sasl.home / "logs" / "worker.log").read_text()

    wrong = sasl.model_copy(update={"kafka": sasl.kafka.model_copy(update={"sasl_password": SecretStr("nope")})})
    result = CliRunner().invoke(main, ["lag"], obj={"settings": wrong})
    assert result.exit_code != 0 and "nope" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "Kafka" in errors[0], result.output
