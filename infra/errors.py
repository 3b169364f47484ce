"""The one exception tree of recstream.

Every error a user or operator can meet derives from :class:`RecstreamError`, so a caller can catch
the whole family at once and the CLI can print a one-line message instead of a stack trace.

>>> issubclass(EventValidationError, RecstreamError)
True
>>> str(EventValidationError("invalid_json", "expecting ',' at byte 12"))
"invalid_json: expecting ',' at byte 12"
"""

from __future__ import annotations


class RecstreamError(Exception):
    """Root of every recstream error."""


class ConfigError(RecstreamError):
    """Settings are invalid (bad value, bad file). Operator action: fix recstream.toml or the env var."""


class InfraError(RecstreamError):
    """A local service (Kafka broker, Redis server) could not be installed, started, reached or stopped.

    Operator action: read the log file named in the message.
    """


class KafkaError(RecstreamError):
    """A Kafka client operation failed (topic creation, produce, offsets)."""


class StateError(RecstreamError):
    """Feature state in Redis is missing, corrupt, or of an incompatible layout version."""


class RedisRollbackError(StateError):
    """Redis went back in time under a running worker (it lost acknowledged writes): the worker stops, and
    its restart resumes from the offsets Redis says were applied (stream.resume)."""


class SourceGapError(StateError):
    """A batch starts past the next offset Redis says is unapplied: records in between were taken from
    Kafka but never applied (a consumer that lost its buffer). The worker stops instead of moving on (its
    clock would then cover them: lost for good), and its restart resumes from what Redis applied."""


class InputError(RecstreamError):
    """A user-supplied input file or argument is unusable (missing file, unknown format, bad line)."""


class EventValidationError(RecstreamError):
    """One event failed validation; ``reason`` is a short code used as a metric label.

    Raised by the decoder only; the worker routes the message to the dead-letter topic.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class IncompatibleFilterError(RecstreamError):
    """Two Bloom filters with different parameters or hash schemes cannot be combined."""


class ModelError(RecstreamError):
    """A model version is missing, corrupt, or its frozen tower weights changed since it was published.

    Operator action: ``recstream model list``; run ``recstream full-update`` or ``recstream model rollback``.
    """
