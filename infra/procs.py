"""Process hygiene for the local services: pid files, cmdline checks, ports, log tails.

A pid file alone never justifies a signal: the pid may have been reused by an unrelated process.
Before signalling we read ``/proc/<pid>/cmdline`` and require every marker of the service we started
(e.g. ``kafka.Kafka`` and the absolute path of *our* server.properties) to be present.

>>> cmdline_matches(b"java\\x00-cp\\x00/x/*\\x00kafka.Kafka\\x00/h/kafka/server.properties\\x00",
...                 ["kafka.Kafka", "/h/kafka/server.properties"])
True
>>> cmdline_matches(b"java\\x00kafka.Kafka\\x00/other/server.properties\\x00",
...                 ["kafka.Kafka", "/h/kafka/server.properties"])
False
>>> cmdline_matches(b"", ["redis-server"])
False
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from infra.errors import InfraError

# Popen objects of the services this interpreter started, so we can reap them (no zombies and no
# "subprocess still running" ResourceWarning) when the same process stops them again.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


@contextlib.contextmanager
def locked(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_file`` (serialises concurrent starts/downloads)."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def check_config_unchanged(config: Path, wanted: str, service: str, pid: int) -> None:
    """InfraError when a running service was started with a different config than ``wanted``."""
    try:
        current = config.read_text()
    except OSError:
        return
    if current != wanted:
        msg = (f"{service} (pid {pid}) is running with other settings than the current ones (see {config}); "
               "run `recstream infra down` first, then start it again")
        raise InfraError(msg)


def cmdline_matches(cmdline: bytes, markers: Sequence[str]) -> bool:
    """True when every marker occurs in the NUL-separated ``cmdline`` (see module doctest).

    Processes that rewrite their title (redis-server) put spaces instead of NULs, so the check is
    substring-based over the space-joined arguments.
    """
    text = cmdline.replace(b"\x00", b" ").decode("utf-8", "replace").strip()
    return bool(text) and all(m in text for m in markers)


def parse_pid(text: str) -> int | None:
    """The pid in a pid file's text, or None when it is not a positive integer.

    >>> parse_pid("1234\\n"), parse_pid(""), parse_pid("abc"), parse_pid("-5")
    (1234, None, None, None)
    """
    text = text.strip()
    if not text.isdigit():
        return None
    pid = int(text)
    return pid if pid > 0 else None


def read_pid(pid_file: Path) -> int | None:
    """The pid recorded in ``pid_file``, or None when the file is missing or garbled."""
    try:
        return parse_pid(pid_file.read_text())
    except OSError:
        return None


def write_pid(pid_file: Path, pid: int) -> None:
    """Record ``pid`` atomically (write + rename)."""
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = pid_file.with_suffix(pid_file.suffix + ".tmp")
    tmp.write_text(f"{pid}\n")
    tmp.replace(pid_file)


def remove_pid(pid_file: Path) -> None:
    """Delete ``pid_file`` if present."""
    with contextlib.suppress(FileNotFoundError):
        pid_file.unlink()


def read_cmdline(pid: int) -> bytes | None:
    """``/proc/<pid>/cmdline``, or None when the process is gone or is a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        # state is the first field after the parenthesised command name
        if stat[stat.rindex(")") + 2 :].startswith("Z"):
            _reap(pid)
            return None
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None


def owned_pid(pid_file: Path, markers: Sequence[str]) -> int | None:
    """The pid from ``pid_file`` if that process is alive and its cmdline carries all ``markers``."""
    pid = read_pid(pid_file)
    if pid is None:
        return None
    cmdline = read_cmdline(pid)
    if cmdline is None or not cmdline_matches(cmdline, markers):
        return None
    return pid


def _reap(pid: int) -> None:
    """Collect the exit status of a service this interpreter spawned (other zombies count as gone)."""
    child = _CHILDREN.pop(pid, None)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=0)


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (zombies of our own children are reaped)."""
    return read_cmdline(pid) is not None


def spawn(cmd: Sequence[str], log_file: Path, pid_file: Path, cwd: Path | None = None) -> int:
    """Start ``cmd`` in its own session, stdout+stderr appended to ``log_file``; write the pid file."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    try:
        with log_file.open("ab") as log:
            proc = subprocess.Popen(
                list(cmd), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=cwd, start_new_session=True,
            )
    except OSError as exc:
        msg = f"cannot start {cmd[0]}: {exc}"
        raise InfraError(msg) from None
    _CHILDREN[proc.pid] = proc
    write_pid(pid_file, proc.pid)
    return proc.pid


def wait_gone(pid: int, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``pid`` to exit; True if it did."""
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def terminate(pid: int, markers: Sequence[str], timeout: float, name: str) -> None:
    """SIGTERM ``pid`` (only if its cmdline still carries ``markers``), wait, SIGKILL after ``timeout``."""
    cmdline = read_cmdline(pid)
    if cmdline is None or not cmdline_matches(cmdline, markers):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if wait_gone(pid, timeout):
        return
    cmdline = read_cmdline(pid)
    if cmdline is not None and cmdline_matches(cmdline, markers):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if not wait_gone(pid, 10):
        msg = f"{name} (pid {pid}) did not exit after SIGTERM and SIGKILL; check it with `ps -p {pid}`"
        raise InfraError(msg)


def port_free(host: str, port: int) -> bool:
    """True when nothing listens on ``host:port`` (we can bind it ourselves)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when a TCP connect to ``host:port`` succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def file_size(path: Path) -> int:
    """Size of ``path`` in bytes, 0 when missing (to tail only what a new run appends)."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def tail(path: Path, lines: int = 20, since: int = 0) -> str:
    """The last ``lines`` lines of a text file written after byte ``since`` ('' when none)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(since, size - 64 * 1024))
            data = fh.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])
