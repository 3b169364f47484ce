"""librdkafka's own logs, for every Kafka client of recstream: through Python logging, de-duplicated.

A librdkafka client left to itself writes every reconnect attempt to stderr: with the broker down,
``recstream lag`` printed ~200 lines of "Connection refused" before its one error. Every client gets
``logger=`` a logger of the ``recstream.kafka`` family carrying a :class:`RepeatFilter` (a message that
differs only in numbers passes at most once per ``every`` seconds) and an ``error_cb`` that logs at
warning through the same logger — the command then reports the failure itself, in one line.

>>> f = RepeatFilter(every=60)
>>> rec = lambda msg: logging.LogRecord("x", logging.WARNING, "", 0, msg, None, None)
>>> f.filter(rec("connect to 127.0.0.1:9092 failed")), f.filter(rec("connect to 127.0.0.1:9093 failed"))
(True, False)
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

__all__ = ["RepeatFilter", "client_logging", "kafka_logger"]


class RepeatFilter(logging.Filter):
    """Mutes records while ``quiet`` and lets a repeated message (digits ignored) through at most once per
    ``every`` seconds."""

    def __init__(self, every: float = 30.0) -> None:
        super().__init__()
        self.quiet = False
        self.every = every
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if self.quiet:
            return False
        key = re.sub(r"\d+", "#", record.getMessage())
        now = time.monotonic()
        if now - self._last.get(key, -self.every) < self.every:
            return False
        if len(self._last) > 1000:
            self._last.clear()
        self._last[key] = now
        return True


def kafka_logger(name: str, every: float = 30.0) -> logging.Logger:
    """``recstream.kafka.<name>``, at warning, with one :class:`RepeatFilter` (added once)."""
    logger = logging.getLogger(f"recstream.kafka.{name}")
    logger.setLevel(logging.WARNING)
    if not any(isinstance(f, RepeatFilter) for f in logger.filters):
        logger.addFilter(RepeatFilter(every))
    return logger


def client_logging(name: str) -> dict[str, Any]:
    """The ``logger`` and ``error_cb`` entries of a confluent-kafka client configuration."""
    logger = kafka_logger(name)
    return {"logger": logger, "error_cb": lambda err: logger.warning("kafka: %s", err)}
