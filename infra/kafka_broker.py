"""The local Apache Kafka broker: one KRaft node (broker + controller) run from Maven Central jars.

Layout under ``settings.home``::

    kafka/server.properties   generated from the settings on every start
    kafka/data/               log.dirs (formatted once by kafka.tools.StorageTool)
    kafka/logs/kafka.out      JVM stdout/stderr (errors), kafka/logs/server.log (log4j)
    kafka/kafka.pid

The jars live outside the home, in a per-version cache shared by every home (tests use temporary
homes): ``$XDG_CACHE_HOME/recstream/kafka-<version>/libs`` unless ``kafka.jars_dir`` is set.

Run ``python -m infra.kafka_broker --fetch-jars`` to download them ahead of time.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from infra import procs
from infra.errors import InfraError, RecstreamError
from infra.settings import KafkaSettings, Settings, load_settings

PACKAGE_DIR = Path(__file__).resolve().parent / "kafka"
POM = PACKAGE_DIR / "pom.xml"
LOG4J = PACKAGE_DIR / "log4j.properties"
TOOLS_LOG4J = PACKAGE_DIR / "tools-log4j.properties"
COMPLETE_MARKER = ".complete"
MAIN_CLASS = "kafka.Kafka"
STOP_TIMEOUT_S = 60.0

JVM_OPTS = (
    "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent", "-XX:MaxInlineLevel=15", "-Djava.awt.headless=true",
    "-Djava.net.preferIPv4Stack=true",
)


@dataclass(frozen=True)
class BrokerPaths:
    """Where one data home keeps its broker's files."""

    root: Path

    @classmethod
    def of(cls, settings: Settings) -> BrokerPaths:
        """The paths for ``settings.home``."""
        return cls(Path(settings.home).resolve() / "kafka")

    @property
    def config(self) -> Path:
        return self.root / "server.properties"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def out(self) -> Path:
        return self.logs / "kafka.out"

    @property
    def server_log(self) -> Path:
        return self.logs / "server.log"

    @property
    def pid_file(self) -> Path:
        return self.root / "kafka.pid"

    @property
    def markers(self) -> tuple[str, ...]:
        """What /proc/<pid>/cmdline must contain for the pid to be *this* home's broker."""
        return (MAIN_CLASS, str(self.config))


# ---------------------------------------------------------------------------------------------- pure


def default_jars_dir(version: str, env: dict[str, str] | None = None) -> Path:
    """The shared per-version jar cache, derived from XDG_CACHE_HOME (never from the data home).

    >>> str(default_jars_dir("3.9.2", {"XDG_CACHE_HOME": "/c"}))
    '/c/recstream/kafka-3.9.2/libs'
    """
    env = dict(os.environ) if env is None else env
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "recstream" / f"kafka-{version}" / "libs"


def jars_dir(kafka: KafkaSettings) -> Path:
    """``kafka.jars_dir`` if set, else :func:`default_jars_dir`."""
    return Path(kafka.jars_dir).expanduser() if kafka.jars_dir else default_jars_dir(kafka.version)


def new_cluster_id() -> str:
    """A KRaft cluster id: a type-4 UUID, URL-safe base64 without padding (what StorageTool makes).

    Ids starting with ``-`` are drawn again: StorageTool would parse them as an option.

    >>> ids = [new_cluster_id() for _ in range(500)]
    >>> {len(i) for i in ids}, any(i.startswith("-") for i in ids)
    ({22}, False)
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def render_server_properties(kafka: KafkaSettings, data_dir: Path) -> str:
    """server.properties for one combined broker+controller node on loopback, replication 1.

    >>> text = render_server_properties(KafkaSettings(port=19092), Path("/h/kafka/data"))
    >>> "listeners=PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093" in text
    True
    >>> "controller.quorum.voters=1@127.0.0.1:19093" in text, "auto.create.topics.enable=false" in text
    (True, True)
    >>> [line for line in text.splitlines() if line.startswith(("log.dirs", "log.retention.ms"))]
    ['log.dirs=/h/kafka/data', 'log.retention.ms=3024000000']
    """
    host, port, cport = kafka.host, kafka.port, kafka.controller_port
    listener = _listener(kafka)
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{host}:{cport}",
        "controller.listener.names": "CONTROLLER",
        "listeners": f"{listener}://{host}:{port},CONTROLLER://{host}:{cport}",
        "advertised.listeners": f"{listener}://{host}:{port}",
        "inter.broker.listener.name": listener,
        "listener.security.protocol.map": f"CONTROLLER:PLAINTEXT,{listener}:{listener}",
        **_sasl_properties(kafka),
        "log.dirs": str(data_dir),
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "offsets.topic.num.partitions": "1",
        "transaction.state.log.num.partitions": "1",
        "auto.create.topics.enable": "false",
        "num.partitions": str(kafka.partitions),
        "num.network.threads": "2",
        "num.io.threads": "4",
        "background.threads": "4",
        "num.recovery.threads.per.data.dir": "1",
        "log.cleaner.dedupe.buffer.size": "33554432",
        "log.retention.ms": str(kafka.retention_ms),
        "log.segment.bytes": "268435456",
        "log.retention.check.interval.ms": "300000",
    }
    header = "# Generated by recstream (infra/kafka_broker.py) from the settings; edits are overwritten.\n"
    lines = (f"{k}={v}" for k, v in props.items())
    return header + "".join(line.replace("\\", "\\\\") + "\n" for line in lines)  # properties unescape backslashes


def _listener(kafka: KafkaSettings) -> str:
    """The client listener's protocol: PLAINTEXT, or SASL_PLAINTEXT with PLAIN (the managed broker's
    security; SSL and SCRAM belong to a cluster of your own: set ``kafka.bootstrap``)."""
    if kafka.security_protocol == "PLAINTEXT":
        return "PLAINTEXT"
    if kafka.security_protocol == "SASL_PLAINTEXT" and kafka.sasl_mechanism == "PLAIN":
        return "SASL_PLAINTEXT"
    msg = (f"the local broker supports kafka.security_protocol PLAINTEXT or SASL_PLAINTEXT with PLAIN, not "
           f"{kafka.security_protocol}/{kafka.sasl_mechanism}: point kafka.bootstrap at a cluster of yours")
    raise InfraError(msg)


def _jaas_quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _sasl_properties(kafka: KafkaSettings) -> dict[str, str]:
    """SASL/PLAIN on the client listener: one user, ``kafka.sasl_username``, which the broker also uses to
    talk to itself (the password lands in server.properties, written 0600; Kafka logs it as [hidden])."""
    if _listener(kafka) == "PLAINTEXT":
        return {}
    user, password = _jaas_quote(kafka.sasl_username), _jaas_quote(kafka.sasl_password.get_secret_value())
    jaas = (f"org.apache.kafka.common.security.plain.PlainLoginModule required username={user} "
            f"password={password} user_{kafka.sasl_username}={password};")
    return {"sasl.enabled.mechanisms": "PLAIN", "sasl.mechanism.inter.broker.protocol": "PLAIN",
            "listener.name.sasl_plaintext.plain.sasl.jaas.config": jaas}


def broker_command(settings: Settings, paths: BrokerPaths, libs: Path) -> list[str]:
    """The ``java ... kafka.Kafka server.properties`` command line (no IO).

    >>> cmd = broker_command(Settings(home="/h"), BrokerPaths(Path("/h/kafka")), Path("/j"))
    >>> cmd[0], cmd[1:3], cmd[-3:]
    ('java', ['-Xms512m', '-Xmx512m'], ['/j/*', 'kafka.Kafka', '/h/kafka/server.properties'])
    """
    heap = settings.kafka.heap
    return [
        "java", f"-Xms{heap}", f"-Xmx{heap}", *JVM_OPTS,
        f"-Dkafka.logs.dir={paths.logs}", f"-Dlog4j.configuration=file:{LOG4J}",
        "-cp", f"{libs}/*", MAIN_CLASS, str(paths.config),
    ]


def format_command(paths: BrokerPaths, libs: Path, cluster_id: str) -> list[str]:
    """The one-off ``StorageTool format`` command line (no IO)."""
    return [
        "java", "-Xmx256m", "-Djava.net.preferIPv4Stack=true", f"-Dkafka.logs.dir={paths.logs}",
        f"-Dlog4j.configuration=file:{TOOLS_LOG4J}", "-cp", f"{libs}/*", "kafka.tools.StorageTool",
        "format", "-t", cluster_id, "-c", str(paths.config), "--ignore-formatted",
    ]


def maven_errors(output: str, limit: int = 5) -> str:
    """The useful ``[ERROR]`` lines of Maven output, without colour codes and boilerplate.

    >>> maven_errors("\\x1b[0m[INFO] x\\n[ERROR] Failed to execute goal: Could not find artifact\\n"
    ...              "[ERROR] \\n[ERROR] Re-run Maven using the -X switch\\n")
    '[ERROR] Failed to execute goal: Could not find artifact'
    """
    clean = re.sub(r"\x1b\[[0-9;]*m", "", output)
    lines = [ln.rstrip() for ln in clean.splitlines()]
    errors = [ln for ln in lines if ln.startswith("[ERROR]") and ln[7:].strip()
              and not any(b in ln for b in _MAVEN_BOILERPLATE)]
    return "\n".join((errors or [ln for ln in lines if ln.strip()])[:limit])


_MAVEN_BOILERPLATE = ("-e switch", "-X switch", "possible solutions", "[Help 1] http", "full stack trace")


# ---------------------------------------------------------------------------------------------- jars


def _require(binary: str, package: str) -> str:
    found = shutil.which(binary)
    if found is None:
        msg = f"`{binary}` not found on PATH; run `bash infra/bootstrap.sh` (or `apt-get install {package}`)"
        raise InfraError(msg)
    return found


def fetch_jars(kafka: KafkaSettings, quiet: bool = False) -> Path:
    """Download the broker jars once into the shared cache; return the libs directory.

    Reuses a complete earlier download (marker file). Safe against concurrent callers (file lock)
    and interrupted downloads (Maven writes into a scratch directory that is renamed at the end).
    """
    libs = jars_dir(kafka)
    if (libs / COMPLETE_MARKER).exists():
        return libs
    with procs.locked(libs.parent / f".{libs.name}.lock"):
        if (libs / COMPLETE_MARKER).exists():
            return libs
        mvn = _require("mvn", "maven")
        _require("java", "openjdk-17-jre-headless")
        scratch = libs.parent / f".{libs.name}.partial"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        shutil.copy(POM, scratch / "pom.xml")
        if not quiet:
            print(f"fetching Kafka {kafka.version} broker jars from Maven Central into {libs} "
                  "(~60 jars, ~50 MB; once per version)", file=sys.stderr, flush=True)
        cmd = [mvn, "-B", "-q", "-U", "-Dstyle.color=never", f"-Dkafka.version={kafka.version}",
               f"-Dlibs.dir={scratch / 'libs'}", "dependency:copy-dependencies"]
        result = subprocess.run(cmd, cwd=scratch, capture_output=True, text=True, check=False)
        jars = sorted((scratch / "libs").glob("*.jar"))
        if result.returncode != 0 or not any(j.name.startswith("kafka_2.13-") for j in jars):
            shutil.rmtree(scratch, ignore_errors=True)
            msg = (f"Maven could not fetch the Kafka {kafka.version} jars (exit {result.returncode}); "
                   "check network access to Maven Central and settings.kafka.version.\n"
                   + maven_errors(result.stdout + result.stderr))
            raise InfraError(msg)
        (scratch / "libs" / COMPLETE_MARKER).write_text(f"{kafka.version} {len(jars)} jars\n")
        shutil.rmtree(libs, ignore_errors=True)
        (scratch / "libs").replace(libs)
        shutil.rmtree(scratch, ignore_errors=True)
    return libs


# ---------------------------------------------------------------------------------------------- run


def running_pid(settings: Settings) -> int | None:
    """The pid of this home's broker if it is running (pid file + matching cmdline), else None."""
    paths = BrokerPaths.of(settings)
    return procs.owned_pid(paths.pid_file, paths.markers)


def _format_storage(paths: BrokerPaths, libs: Path) -> None:
    if (paths.data / "meta.properties").exists():
        return
    result = subprocess.run(format_command(paths, libs, new_cluster_id()), capture_output=True,
                            text=True, check=False)
    if result.returncode != 0:
        out = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        msg = f"formatting Kafka storage {paths.data} failed (exit {result.returncode}):\n{out}"
        raise InfraError(msg)


def wait_ready(settings: Settings, pid: int | None, timeout: float, since: tuple[int, int] = (0, 0)) -> None:
    """Block until the broker answers metadata requests with itself as a broker.

    Raises InfraError naming the log file (with its last lines) if the process dies or on timeout.
    """
    from infra.topics import admin_client

    paths = BrokerPaths.of(settings)
    kafka = settings.kafka
    deadline = time.monotonic() + timeout
    admin = None
    while True:
        if pid is not None and not procs.alive(pid):
            raise InfraError(_failure(paths, f"the Kafka broker (pid {pid}) exited during startup", since))
        if procs.port_open(kafka.host, kafka.port):
            if admin is None:
                admin = admin_client(settings)
            try:
                if admin.list_topics(timeout=2).brokers:
                    return
            except Exception:  # noqa: S110 - KafkaException while the broker is still starting
                pass
        if time.monotonic() >= deadline:
            what = f"the Kafka broker on {kafka.bootstrap} was not ready after {timeout:.0f}s"
            raise InfraError(_failure(paths, what, since))
        time.sleep(0.2)


def _failure(paths: BrokerPaths, what: str, since: tuple[int, int] = (0, 0)) -> str:
    parts = [f"{what}; see {paths.out} and {paths.server_log}"]
    for log, offset in zip((paths.out, paths.server_log), since, strict=True):
        text = procs.tail(log, 15, since=offset)
        if text:
            parts.append(f"--- last lines of {log} ---\n{text}")
    return "\n".join(parts)


def start(settings: Settings, timeout: float | None = None) -> int:
    """Start this home's broker unless it already runs; wait until ready; return its pid.

    Raises InfraError when the port is taken by another process, the jars cannot be fetched, or the
    broker does not come up (the message names the log file).
    """
    kafka = settings.kafka
    timeout = kafka.start_timeout_s if timeout is None else timeout
    paths = BrokerPaths.of(settings)
    with procs.locked(paths.root / ".start.lock"):
        return _start_locked(settings, paths, timeout)


def _start_locked(settings: Settings, paths: BrokerPaths, timeout: float) -> int:
    kafka = settings.kafka
    config = render_server_properties(kafka, paths.data)
    pid = running_pid(settings)
    if pid is not None:
        procs.check_config_unchanged(paths.config, config, "the Kafka broker", pid)
        wait_ready(settings, pid, timeout)
        return pid
    procs.remove_pid(paths.pid_file)
    for port, what in ((kafka.port, "port"), (kafka.controller_port, "controller_port")):
        if not procs.port_free(kafka.host, port):
            msg = (f"cannot start Kafka: {kafka.host}:{port} (kafka.{what}) is already in use by another "
                   f"process; stop it, or pick a free port with RECSTREAM_KAFKA_{what.upper()}=<port>")
            raise InfraError(msg)
    _require("java", "openjdk-17-jre-headless")
    libs = fetch_jars(kafka)
    for d in (paths.data, paths.logs):
        d.mkdir(parents=True, exist_ok=True)
    paths.config.write_text(config)
    paths.config.chmod(0o600)  # a SASL password may be in it
    _format_storage(paths, libs)
    with paths.out.open("ab") as out:
        out.write(f"==== starting Kafka {kafka.version} at {time.ctime()} ====\n".encode())
    since = (procs.file_size(paths.out), procs.file_size(paths.server_log))
    pid = procs.spawn(broker_command(settings, paths, libs), paths.out, paths.pid_file, cwd=paths.root)
    try:
        wait_ready(settings, pid, timeout, since)
    except InfraError:
        procs.terminate(pid, paths.markers, 15, "Kafka broker")
        procs.remove_pid(paths.pid_file)
        raise
    return pid


def stop(settings: Settings, timeout: float = STOP_TIMEOUT_S) -> bool:
    """Stop this home's broker (SIGTERM, SIGKILL after ``timeout``); True if one was running."""
    paths = BrokerPaths.of(settings)
    pid = running_pid(settings)
    if pid is not None:
        procs.terminate(pid, paths.markers, timeout, "Kafka broker")
    procs.remove_pid(paths.pid_file)
    return pid is not None


def main(argv: list[str] | None = None) -> int:
    """``python -m infra.kafka_broker --fetch-jars``: download the broker jars into the cache."""
    parser = argparse.ArgumentParser(prog="python -m infra.kafka_broker")
    parser.add_argument("--fetch-jars", action="store_true", help="download the broker jars (once)")
    args = parser.parse_args(argv)
    if not args.fetch_jars:
        parser.print_help()
        return 2
    try:
        fetch_jars(load_settings().kafka)
    except RecstreamError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
