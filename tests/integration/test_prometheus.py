"""A real Prometheus (the Debian package) started by ``infra.prometheus_server``: it loads recstream's
alert rules, scrapes a recstream-style /metrics endpoint, and evaluates the lag alert on what it scraped
(pending for a lagging partition, nothing for an idle one)."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from infra import prometheus_server
from infra.settings import Settings
from tests.conftest import free_ports

pytestmark = pytest.mark.integration


def _api(port: int, path: str) -> Any:
    return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/{path}", timeout=5).read())["data"]


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[Settings, Gauge]]:
    worker_port, prom_port = free_ports(2)
    registry = CollectorRegistry()
    lag = Gauge("recstream_consumer_lag_seconds", "lag", ["group", "topic", "partition"], registry=registry)
    server, _thread = start_http_server(worker_port, addr="127.0.0.1", registry=registry)
    settings = Settings(home=tmp_path, worker={"metrics_port": worker_port}, learning={"metrics_port": 0},
                        serving={"port": free_ports(1)[0]},
                        monitoring={"prometheus_port": prom_port, "scrape_interval_s": 1})
    prometheus_server.start(settings)
    yield settings, lag
    prometheus_server.stop(settings)
    server.shutdown()


def test_rules_load_targets_scrape_and_the_lag_alert_evaluates(prometheus: tuple[Settings, Gauge]) -> None:
    settings, lag = prometheus
    port = settings.monitoring.prometheus_port
    lag.labels(group="recstream", topic="recstream-events", partition="3").set(120)
    lag.labels(group="recstream", topic="recstream-events", partition="1").set(0)  # idle
    names = {r["name"] for g in _api(port, "rules")["groups"] for r in g["rules"]}
    assert {"RecstreamConsumerLag", "RecstreamWorkerDown", "RecstreamTrainerStalled"} <= names
    deadline, alerts = time.monotonic() + 30, []
    while time.monotonic() < deadline and not alerts:
        alerts = [a for a in _api(port, "alerts")["alerts"] if a["labels"]["alertname"] == "RecstreamConsumerLag"]
        time.sleep(0.5)
    assert [(a["labels"]["partition"], a["state"]) for a in alerts] == [("3", "pending")]
    targets = _api(port, "targets")["activeTargets"]
    assert [t["health"] for t in targets if t["labels"]["job"] == "recstream-worker"] == ["up"]
    assert prometheus_server.running_pid(settings) is not None
