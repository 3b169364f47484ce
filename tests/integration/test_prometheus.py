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
    deadline, alerts = time.monotonic() + 30, list[Any]()
    while time.monotonic() < deadline and not alerts:
        alerts = [a for a in _api(port, "alerts")["alerts"] if a["labels"]["alertname"] == "RecstreamConsumerLag"]
        time.sleep(0.5)
    assert [(a["labels"]["partition"], a["state"]) for a in alerts] == [("3", "pending")]
    targets = _api(port, "targets")["activeTargets"]
    assert [t["health"] for t in targets if t["labels"]["job"] == "recstream-worker"] == ["up"]
    assert prometheus_server.running_pid(settings) is not None


def test_a_stopped_worker_raises_the_lag_alert_and_a_restart_clears_it(services: object, tmp_path: Path) -> None:
    """Real broker, worker, `recstream lag --serve` and Prometheus, events arriving all along (one user:
    one busy partition; the items topic stays idle). The rules are the shipped ones with the group-lag
    alert scaled for a test (threshold 5 s instead of 60 s, for 2 s instead of 2 m)."""
    import os
    import subprocess
    import sys
    import threading

    from filters.events import Event
    from infra.settings import to_env
    from infra.topics import ensure_topics
    from stream.lag import LagProbe
    from stream.producer import EventProducer
    from stream.worker_process import WorkerProcess
    from tests.conftest import private_topics

    base: Settings = services.settings  # type: ignore[attr-defined]
    exporter, prom_port = free_ports(2)
    settings = private_topics(base, "prom", worker={"metrics_port": 0}, learning={"metrics_port": 0},
                              serving={"port": free_ports(1)[0]},
                              monitoring={"prometheus_port": prom_port, "scrape_interval_s": 1, "canary_port": 0,
                                          "lag_exporter_port": exporter},
                              ).model_copy(update={"home": tmp_path})
    ensure_topics(settings)
    events_topic = settings.kafka.events_topic
    rules = tmp_path / "alerts.yml"
    rules.write_text(prometheus_server.RULES.read_text().replace(
        "(recstream_group_lag_seconds) > 60\n        for: 2m", "(recstream_group_lag_seconds) > 5\n        for: 2s"))
    lag = subprocess.Popen([sys.executable, "-m", "recstream.cli", "lag", "--serve", str(exporter), "--watch", "1"],
                           env={**os.environ, **to_env(settings)}, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    stop = threading.Event()

    def produce() -> None:  # one event every 0.1 s, all to user u9
        with EventProducer(settings) as producer:
            k = 0
            while not stop.is_set():
                producer.send(Event(event_id=f"e{k}", type="click", user_id="u9", item_id="i",
                                    ts=int(time.time() * 1000)))
                producer.poll(0)
                k += 1
                stop.wait(0.1)

    def firing() -> list[tuple[str, str]]:
        return sorted((a["labels"]["topic"], a["labels"]["partition"]) for a in _api(prom_port, "alerts")["alerts"]
                      if a["labels"]["alertname"] == "RecstreamGroupLag" and a["state"] == "firing")

    def lag_of(metric: str) -> float:
        result = _api(prom_port, f"query?query=max(recstream_group_lag_{metric}{{topic=%22{events_topic}%22}})")
        return float(result["result"][0]["value"][1]) if result["result"] else -1.0

    def wait_for(cond: Any, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return True
            time.sleep(0.5)
        return False

    producer = threading.Thread(target=produce, daemon=True)
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    try:
        prometheus_server.start(settings, rules)
        worker.start()
        producer.start()
        LagProbe(settings).wait_until_caught_up(60)
        assert wait_for(lambda: 0 <= lag_of("seconds") < 5), "no lag scraped, or lag with the worker running"
        assert firing() == []
        worker.stop()  # events keep arriving
        assert wait_for(lambda: lag_of("messages") >= 20), "the offset lag did not rise with the worker down"
        first_s = lag_of("seconds")
        assert wait_for(lambda: firing() != []), "the lag alert never fired with the worker down"
        assert firing() == [(events_topic, firing()[0][1])]  # one busy partition; idle ones and items: none
        assert lag_of("seconds") > first_s  # the oldest unprocessed record keeps getting older
        worker.start()
        assert wait_for(lambda: 0 <= lag_of("seconds") < 5 and firing() == []), \
            "the lag alert did not clear after the worker restarted"
        assert lag_of("messages") < 20
    finally:
        stop.set()
        producer.join(10)
        worker.stop()
        lag.terminate()
        lag.wait(10)
        prometheus_server.stop(settings)
