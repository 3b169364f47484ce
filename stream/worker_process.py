"""Run ``recstream worker`` (or another long-running command: ``trainer``) as a child process (used by
the demo, the benchmarks and the tests).

The child gets the exact settings of the parent through environment variables
(:func:`infra.settings.to_env`), its output goes to a log file, and it is stopped with SIGTERM
(or killed with SIGKILL to simulate a crash).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from infra.errors import InfraError
from infra.settings import Settings, to_env

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the parent dies, so no worker is ever orphaned."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class WorkerProcess:
    """One worker child process (``args`` = another ``recstream`` command); stopped on exit."""

    def __init__(self, settings: Settings, log_path: Path | None = None, loglevel: str = "info",
                 args: tuple[str, ...] | None = None) -> None:
        self.settings = settings
        self.loglevel = loglevel
        self.args = args or ("worker", "--loglevel", loglevel)
        self.log_path = log_path or settings.home / "logs" / f"{self.args[0]}.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def start(self) -> WorkerProcess:
        """Start the worker; raises :class:`InfraError` if it exits within the first second."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **to_env(self.settings), "PYTHONUNBUFFERED": "1"}
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "recstream.cli", *self.args],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        time.sleep(1.0)
        if self._proc.poll() is not None:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
            last = f" ({lines[-1].removeprefix('error: ')})" if lines else ""
            msg = f"{self.args[0]} exited with code {self._proc.returncode}{last}; log: {self.log_path}"
            raise InfraError(msg)
        return self

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, wait, then SIGKILL; returns the exit code."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return None if proc is None else proc.returncode
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(10)

    def wait(self, timeout: float) -> int:
        """Wait for the child to exit by itself (e.g. ``trainer --until-idle``); returns its exit code."""
        if self._proc is None:
            msg = "the process was never started"
            raise InfraError(msg)
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            msg = f"{self.args[0]} did not exit within {timeout:.0f} s; log: {self.log_path}"
            raise InfraError(msg) from None

    def crash(self) -> None:
        """SIGKILL the worker, as a power cut would: no commit, no flush."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(10)

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
