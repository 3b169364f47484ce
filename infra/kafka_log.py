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
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from infra.settings import KafkaSettings

__all__ = ["RepeatFilter", "client_config", "client_logging", "faust_credentials", "kafka_logger"]


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


def client_config(kafka: KafkaSettings, name: str) -> dict[str, Any]:
    """The base of every confluent-kafka client's configuration: the brokers (IPv4), the security settings
    (``kafka.security_protocol`` and SASL / SSL) and :func:`client_logging`.

    >>> from infra.settings import KafkaSettings
    >>> c = client_config(KafkaSettings(security_protocol="SASL_SSL", sasl_username="u", sasl_password="p"), "x")
    >>> c["security.protocol"], c["sasl.mechanism"], c["sasl.password"], sorted(client_config(KafkaSettings(), "x"))
    ('SASL_SSL', 'PLAIN', 'p', ['bootstrap.servers', 'broker.address.family', 'error_cb', 'logger'])
    """
    config: dict[str, Any] = {"bootstrap.servers": kafka.bootstrap, "broker.address.family": "v4",
                              **client_logging(name)}
    if kafka.security_protocol != "PLAINTEXT":
        config["security.protocol"] = kafka.security_protocol
    if kafka.security_protocol.startswith("SASL"):
        config.update({"sasl.mechanism": kafka.sasl_mechanism, "sasl.username": kafka.sasl_username,
                       "sasl.password": kafka.sasl_password.get_secret_value()})
    if kafka.ssl_cafile and kafka.security_protocol.endswith("SSL"):
        config["ssl.ca.location"] = kafka.ssl_cafile
    return config


def faust_credentials(kafka: KafkaSettings) -> Any:
    """The same security for the Faust worker (aiokafka): None, or faust's SASL / SSL credentials."""
    import ssl

    import faust

    if kafka.security_protocol == "PLAINTEXT":
        return None
    context = ssl.create_default_context(cafile=kafka.ssl_cafile or None) \
        if kafka.security_protocol.endswith("SSL") else None
    if kafka.security_protocol == "SSL":
        return faust.SSLCredentials(context)
    return faust.SASLCredentials(username=kafka.sasl_username, password=kafka.sasl_password.get_secret_value(),
                                 mechanism=kafka.sasl_mechanism, ssl_context=context)


def client_logging(name: str) -> dict[str, Any]:
    """The ``logger`` and ``error_cb`` entries of a confluent-kafka client configuration."""
    logger = kafka_logger(name)
    return {"logger": logger, "error_cb": lambda err: logger.warning("kafka: %s", err)}
