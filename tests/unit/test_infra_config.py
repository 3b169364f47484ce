"""Pure infrastructure logic: config rendering, command lines, pid files and cmdline checks."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from infra import procs
from infra.kafka_broker import (
    BrokerPaths,
    broker_command,
    default_jars_dir,
    format_command,
    jars_dir,
    new_cluster_id,
    render_server_properties,
)
from infra.redis_server import RedisPaths, redact, render_redis_conf
from infra.services import ServiceStatus, Status
from infra.settings import KafkaSettings, RedisSettings, Settings
from infra.topics import topic_specs


def _props(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return {k: v for k, v in pairs}


def test_server_properties_follow_settings() -> None:
    kafka = KafkaSettings(port=19092, controller_port=19999, partitions=4, retention_ms=7_200_000)
    props = _props(render_server_properties(kafka, Path("/h/kafka/data")))
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19999"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19999"
    assert props["process.roles"] == "broker,controller"
    assert props["log.dirs"] == "/h/kafka/data"
    assert props["log.retention.ms"] == "7200000"
    assert props["num.partitions"] == "4"
    assert props["auto.create.topics.enable"] == "false"
    for key in ("offsets.topic.replication.factor", "transaction.state.log.replication.factor",
                "transaction.state.log.min.isr", "offsets.topic.num.partitions",
                "transaction.state.log.num.partitions"):
        assert props[key] == "1", key
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert "log.retention.hours" not in props  # would conflict with log.retention.ms


def test_controller_port_defaults_to_port_plus_one() -> None:
    props = _props(render_server_properties(KafkaSettings(port=20000), Path("/d")))
    assert props["controller.quorum.voters"] == "1@127.0.0.1:20001"


def test_broker_command_line() -> None:
    settings = Settings(home="/h", kafka={"heap": "1g"})
    paths = BrokerPaths.of(settings)
    cmd = broker_command(settings, paths, Path("/jars"))
    assert cmd[:3] == ["java", "-Xms1g", "-Xmx1g"]
    assert "-Djava.net.preferIPv4Stack=true" in cmd
    assert "-Dkafka.logs.dir=/h/kafka/logs" in cmd
    assert any(a.startswith("-Dlog4j.configuration=file:") and a.endswith("log4j.properties") for a in cmd)
    assert cmd[-3:] == ["/jars/*", "kafka.Kafka", "/h/kafka/server.properties"]
    assert all(m in " ".join(cmd) for m in paths.markers)


def test_format_command_uses_ignore_formatted() -> None:
    cmd = format_command(BrokerPaths(Path("/h/kafka")), Path("/jars"), "abc")
    i = cmd.index("kafka.tools.StorageTool")
    assert cmd[i:] == ["kafka.tools.StorageTool", "format", "-t", "abc", "-c",
                       "/h/kafka/server.properties", "--ignore-formatted"]


def test_cluster_ids_are_distinct_uuids() -> None:
    import base64
    import uuid

    ids = {new_cluster_id() for _ in range(100)}
    assert len(ids) == 100
    for cid in ids:
        assert uuid.UUID(bytes=base64.urlsafe_b64decode(cid + "==")).version == 4


def test_jars_cache_is_per_version_and_not_under_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", "/xdg")
    assert default_jars_dir("4.1.1") == Path("/xdg/recstream/kafka-4.1.1/libs")
    assert jars_dir(KafkaSettings()) == Path("/xdg/recstream/kafka-3.9.2/libs")
    assert jars_dir(KafkaSettings(jars_dir="/opt/k")) == Path("/opt/k")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_jars_dir("3.9.2") == Path.home() / ".cache/recstream/kafka-3.9.2/libs"


def test_packaged_kafka_files_exist() -> None:
    from infra.kafka_broker import LOG4J, POM

    assert "${kafka.version}" in POM.read_text()
    assert "maven-dependency-plugin" in POM.read_text()
    assert "${kafka.logs.dir}" in LOG4J.read_text()


def test_redis_conf_persists_with_aof_only() -> None:
    conf = render_redis_conf(RedisSettings(host="127.0.0.1", port=16400, maxmemory="1gb"),
                             Path("/h/my redis"))
    lines = conf.splitlines()
    for expected in ("bind 127.0.0.1", "port 16400", 'dir "/h/my redis"', "appendonly yes",
                     "appendfsync everysec", 'save ""', "daemonize no", "maxmemory 1gb"):
        assert expected in lines, expected
    assert any("{config-file}" in line for line in lines if line.startswith("proc-title-template"))


def test_redis_markers_include_config_path() -> None:
    paths = RedisPaths.of(Settings(home="/h"))
    assert paths.markers == ("redis-server", "/h/redis/redis.conf")
    title = b"/usr/bin/redis-server 127.0.0.1:6379  /h/redis/redis.conf\x00"
    assert procs.cmdline_matches(title, paths.markers)
    other = b"/usr/bin/redis-server 127.0.0.1:6379  /other/redis/redis.conf\x00"
    assert not procs.cmdline_matches(other, paths.markers)


def test_redact() -> None:
    assert redact("redis://user:pw@host:1/0") == "redis://user:***@host:1/0"
    assert redact("rediss://host/0") == "rediss://host/0"


def test_topic_specs_cover_every_topic() -> None:
    settings = Settings(kafka={"partitions": 3})
    specs = {s.name: s for s in topic_specs(settings)}
    assert set(specs) == {"recstream-events", "recstream-dlq", "recstream-samples", "recstream-items"}
    assert all(s.partitions == 3 for s in specs.values())
    assert specs["recstream-items"].config == {"cleanup.policy": "compact"}


def test_status_all_up() -> None:
    up = ServiceStatus("kafka", True, 1, "a", None)
    down = ServiceStatus("redis", False, None, "b", None)
    assert Status(up, up).all_up
    assert not Status(up, down).all_up
    assert [s.name for s in Status(up, down)] == ["kafka", "redis"]


# ---- pid files and cmdline checks (real processes, but only our own short-lived children) ----


def test_pid_file_round_trip(tmp_path: Path) -> None:
    pid_file = tmp_path / "x" / "svc.pid"
    assert procs.read_pid(pid_file) is None
    procs.write_pid(pid_file, 4321)
    assert procs.read_pid(pid_file) == 4321
    pid_file.write_text("garbage")
    assert procs.read_pid(pid_file) is None
    procs.remove_pid(pid_file)
    procs.remove_pid(pid_file)  # idempotent
    assert not pid_file.exists()


def test_owned_pid_requires_matching_cmdline(tmp_path: Path) -> None:
    pid_file = tmp_path / "svc.pid"
    marker = f"recstream-test-{os.getpid()}"
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", marker])
    try:
        procs.write_pid(pid_file, child.pid)
        deadline = time.monotonic() + 10  # until the child has exec'd (before, /proc shows our cmdline)
        while procs.owned_pid(pid_file, [marker]) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert procs.owned_pid(pid_file, [marker]) == child.pid
        assert procs.owned_pid(pid_file, ["kafka.Kafka"]) is None  # a reused pid is not ours
        procs.terminate(child.pid, ["kafka.Kafka"], 1, "x")  # wrong markers: never signalled
        assert child.poll() is None
        procs.terminate(child.pid, [marker], 5, "test child")
        assert child.wait(5) is not None
        assert procs.owned_pid(pid_file, [marker]) is None
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_terminate_escalates_to_sigkill() -> None:
    marker = f"recstream-stubborn-{os.getpid()}"
    code = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ok', flush=True); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code, marker], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline() == b"ok\n"
        procs.terminate(child.pid, [marker], 0.5, "stubborn child")
        assert child.wait(5) == -9  # SIGTERM ignored, so it took a SIGKILL
        assert not procs.alive(child.pid)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_ports() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.listen()
        assert not procs.port_free("127.0.0.1", port)
        assert procs.port_open("127.0.0.1", port)
    assert procs.port_free("127.0.0.1", port)
    assert not procs.port_open("127.0.0.1", port)


def test_tail(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    assert procs.tail(log) == ""
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert procs.tail(log, 2) == "line 98\nline 99"
