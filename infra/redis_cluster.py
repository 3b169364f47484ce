"""A local Redis Cluster: N masters of Debian's ``redis-server`` in cluster mode, joined by
``redis-cli --cluster create`` (no replicas). The tests and benchmarks that prove recstream on a cluster
start one; in production point ``RECSTREAM_REDIS_URL`` at any node of yours and set
``RECSTREAM_REDIS_CLUSTER=1`` (docs/operations.md).

Layout under ``root``: ``node-<port>/`` per node with its ``redis.conf`` (the managed server's, plus the
cluster lines), ``nodes.conf``, AOF and ``redis.log``.

>>> "cluster-port 17001" in render_node_conf(7001, 17001, Path("/h/node-7001"))
True
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis

from infra import procs
from infra.errors import InfraError
from infra.redis_server import BINARY, ensure_binary, render_redis_conf
from infra.settings import RedisSettings

__all__ = ["LocalCluster", "render_node_conf", "running_cluster"]

HOST = "127.0.0.1"
START_TIMEOUT_S = 30.0


def render_node_conf(port: int, bus_port: int, node_dir: Path) -> str:
    """The managed server's redis.conf for ``port``, in cluster mode with its bus on ``bus_port`` (by
    default Redis takes port + 10000, which may be taken or beyond 65535)."""
    base = render_redis_conf(RedisSettings(host=HOST, port=port), node_dir)
    return base + (f"cluster-enabled yes\ncluster-port {bus_port}\ncluster-config-file nodes.conf\n"
                   "cluster-node-timeout 5000\n")


@dataclass(frozen=True)
class LocalCluster:
    """A running local cluster: its nodes' ports and pids."""

    root: Path
    ports: tuple[int, ...]
    pids: tuple[int, ...]

    @property
    def url(self) -> str:
        """A URL of its first node (a cluster client discovers the others)."""
        return f"redis://{HOST}:{self.ports[0]}/0"

    def node_dir(self, port: int) -> Path:
        return self.root / f"node-{port}"

    def markers(self, port: int) -> tuple[str, ...]:
        return (BINARY, str(self.node_dir(port) / "redis.conf"))


def _spawn(root: Path, port: int, bus_port: int, binary: str) -> int:
    node = root / f"node-{port}"
    node.mkdir(parents=True, exist_ok=True)
    (node / "redis.conf").write_text(render_node_conf(port, bus_port, node))
    return procs.spawn([binary, str(node / "redis.conf")], node / "redis.log", node / "redis.pid", cwd=node)


def _create(ports: Sequence[int]) -> None:
    cli = shutil.which("redis-cli")
    if cli is None:
        msg = "redis-cli is missing (Debian package redis-tools, installed with redis-server)"
        raise InfraError(msg)
    cmd = [cli, "--cluster", "create", *(f"{HOST}:{p}" for p in ports), "--cluster-replicas", "0", "--cluster-yes"]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=60)
    if result.returncode != 0:
        out = "\n".join((result.stdout + result.stderr).strip().splitlines()[-5:])
        msg = f"`redis-cli --cluster create` failed (exit {result.returncode}):\n{out}"
        raise InfraError(msg)


def _wait(ports: Sequence[int], pids: Sequence[int], what: str, ready: str, timeout: float) -> None:
    """Until every node answers ``CLUSTER INFO`` with ``cluster_state`` = ``ready`` (empty: any)."""
    deadline = time.monotonic() + timeout
    for port, pid in zip(ports, pids, strict=True):
        client = redis.Redis(host=HOST, port=port, socket_timeout=1, socket_connect_timeout=1)
        while True:
            try:
                state = client.cluster("INFO").get("cluster_state")
                if state is not None and ready in ("", state):
                    break
            except redis.RedisError:
                pass
            if not procs.alive(pid):
                msg = f"redis-server on port {port} exited while {what} (see its redis.log)"
                raise InfraError(msg)
            if time.monotonic() >= deadline:
                msg = f"the local Redis Cluster node on port {port} was not {what} after {timeout:.0f} s"
                raise InfraError(msg)
            time.sleep(0.1)
        client.close()


@contextmanager
def running_cluster(root: Path, nodes: Sequence[tuple[int, int]],
                    timeout: float = START_TIMEOUT_S) -> Iterator[LocalCluster]:
    """Start the ``nodes`` (client port, cluster bus port) under ``root``, create the cluster (every slot
    assigned), yield it, stop the nodes."""
    binary = ensure_binary()
    for port in (p for pair in nodes for p in pair):
        if not procs.port_free(HOST, port):
            msg = f"cannot start a Redis Cluster node: {HOST}:{port} is in use"
            raise InfraError(msg)
    ports = [port for port, _ in nodes]
    pids: list[int] = []
    cluster = LocalCluster(root, tuple(ports), ())
    try:
        pids = [_spawn(root, port, bus, binary) for port, bus in nodes]
        _wait(ports, pids, "started", "", timeout)
        _create(ports)
        _wait(ports, pids, "ready", "ok", timeout)
        cluster = LocalCluster(root, tuple(ports), tuple(pids))
        yield cluster
    finally:
        for port, pid in zip(ports, pids, strict=False):
            procs.terminate(pid, cluster.markers(port), 30, "redis-server")
