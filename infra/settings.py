"""The one settings object: built-in defaults < ``recstream.toml`` < environment variables.

Environment variables are ``RECSTREAM_<SECTION>_<FIELD>`` (split once after the section name), for
example ``RECSTREAM_KAFKA_BOOTSTRAP=127.0.0.1:9092``, ``RECSTREAM_REDIS_URL=redis://127.0.0.1:6379/0``,
``RECSTREAM_BLOOM_FPR=0.005``. Top-level fields have no underscore (``RECSTREAM_HOME``). The TOML
file is ``./recstream.toml`` or the path in ``RECSTREAM_CONFIG``; its tables are the sections::

    [kafka]
    partitions = 8
    [bloom]
    fpr = 0.01

>>> s = Settings()
>>> s.kafka.partitions, s.bloom.retention_days, s.lastn.capacity["click"]
(8, 30, 200)
>>> Settings(kafka={"port": 19092}).kafka.bootstrap
'127.0.0.1:19092'
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from infra.errors import ConfigError

MS_PER_HOUR = 3_600_000
MS_PER_DAY = 86_400_000


def _default_home() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "recstream"


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(_Section):
    """The broker recstream talks to (and, for ``infra up``, the one it starts)."""

    version: str = "3.9.2"
    host: str = "127.0.0.1"
    port: int = Field(9092, ge=1, le=65535)
    controller_port: int = Field(0, ge=0, le=65535, description="0 = port + 1")
    bootstrap: str = Field("", description="empty = host:port of the local broker")
    partitions: int = Field(8, ge=1, le=1024)
    heap: str = "512m"
    events_topic: str = "recstream-events"
    items_topic: str = "recstream-items"
    dlq_topic: str = "recstream-dlq"
    samples_topic: str = "recstream-samples"
    retention_ms: int = Field(35 * MS_PER_DAY, ge=MS_PER_HOUR)
    jars_dir: str = Field(
        "", description="broker jar cache; empty = $XDG_CACHE_HOME/recstream/kafka-<version>/libs"
    )
    start_timeout_s: float = Field(90.0, gt=0, le=3600, description="broker readiness timeout")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    sasl_username: str = ""
    sasl_password: SecretStr = Field(SecretStr(""), description="never logged or printed")
    ssl_cafile: str = Field("", description="CA bundle that verifies the brokers (SSL, SASL_SSL); empty = system")

    @model_validator(mode="after")
    def _fill(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL") and not self.sasl_username:
            msg = f"kafka.security_protocol {self.security_protocol} needs kafka.sasl_username and kafka.sasl_password"
            raise ValueError(msg)
        if not self.bootstrap:
            object.__setattr__(self, "bootstrap", f"{self.host}:{self.port}")
        if not self.controller_port:
            object.__setattr__(self, "controller_port", self.port + 1)
        return self


CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")


class RedisSettings(_Section):
    """The Redis server; ``url`` set means "use this existing Redis, start none"."""

    url: str = ""
    host: str = "127.0.0.1"
    port: int = Field(6479, ge=1, le=65535, description="not 6379: a system Redis often has it")
    db: int = Field(0, ge=0)
    maxmemory: str = "0"
    shards: int = Field(
        64, ge=1, le=16384,
        description="shards per entity kind (one cluster slot each); the worker makes one Lua call per shard "
        "and batch; fixed for the life of the data (rebuild to change it)",
    )
    cluster: bool = Field(
        False, description="url names a node of a Redis Cluster (clients route by slot; shards spread over its "
        "masters); needs url; a redis+cluster:// (rediss+cluster://) url sets it",
    )

    @model_validator(mode="after")
    def _cluster_needs_url(self) -> RedisSettings:
        if self.url.startswith(CLUSTER_SCHEMES):
            object.__setattr__(self, "cluster", True)
        if self.cluster and not self.url:
            msg = "redis.cluster needs redis.url (a node of the cluster, e.g. RECSTREAM_REDIS_URL=redis+cluster://host:7000)"
            raise ValueError(msg)
        if self.cluster and self.db:
            msg = "redis.cluster needs redis.db = 0 (a Redis Cluster has one database)"
            raise ValueError(msg)
        return self

    @property
    def effective_url(self) -> str:
        """The URL clients connect to (a ``+cluster`` scheme without it: redis-py's scheme).

        >>> RedisSettings(url="redis+cluster://10.0.0.5:7000").effective_url, RedisSettings(port=7).effective_url
        ('redis://10.0.0.5:7000', 'redis://127.0.0.1:7/0')
        """
        if self.url.startswith(CLUSTER_SCHEMES):
            return self.url.replace("+cluster://", "://", 1)
        return self.url or f"redis://{self.host}:{self.port}/{self.db}"

    @property
    def managed(self) -> bool:
        """True when recstream starts and stops this Redis itself."""
        return not self.url


class WorkerSettings(_Section):
    """The Faust worker."""

    app_id: str = "recstream"
    batch_size: int = Field(500, ge=1, le=100_000)
    batch_within_s: float = Field(0.05, gt=0, le=60)
    write_chunk_events: int = Field(
        20_000, ge=1, le=1_000_000,
        description="events per Redis write pipeline: a batch is written in chunks, and Python prepares "
        "the next chunk while Redis runs the previous one",
    )
    metrics_port: int = Field(9108, ge=0, le=65535, description="0 = no /metrics endpoint")
    web_port: int = Field(6066, ge=1, le=65535)
    session_timeout_s: float = Field(
        10.0, ge=6, le=300, description="Kafka group session timeout: how long a SIGKILLed worker keeps its "
        "partitions before the group hands them to the others (heartbeats every 3 s)")
    max_future_ms: int = Field(
        MS_PER_HOUR, ge=0, description="an event whose ts is this far ahead of its Kafka record's timestamp is "
        "dead-lettered (future_ts); 0 = off")
    max_age_ms: int = Field(
        31 * MS_PER_DAY, ge=0, description="an event this far behind the newest event time of its partition is "
        "beyond every feature horizon and dead-lettered (too_old); 0 = off")
    gap_check: bool = Field(
        True, description="stop (exit 75) when a batch starts past the next unapplied offset of its partition "
        "(records taken but never applied); turn off only for topics written by transactional producers, whose "
        "commit markers take offsets")
    store: str = "memory://"
    gc_young: int = Field(
        50_000, ge=0, le=10_000_000, description="allocations between young-generation garbage collections "
        "(CPython's default is 700, which costs the ingest stage 30-40 % of its CPU); 0 = Python's defaults "
        "(infra.gc_tuning)")


class BloomSettings(_Section):
    """Exposure filters: one filter per user per time slice, ORed over the retention at query time."""

    fpr: float = Field(0.01, gt=0, lt=0.5, description="false-positive rate of a whole query")
    slice_hours: int = Field(24, ge=1, le=24 * 31)
    retention_days: int = Field(30, ge=1, le=3650)
    slice_capacity: int = Field(200, ge=1, description="expected impressions per user per slice")
    hash_version: int = Field(1, ge=1)
    safety_ttl_days: int = Field(7, ge=1, description="wall-clock TTL margin beyond retention")


class LastNSettings(_Section):
    """Bounded per-user, per-action sequences."""

    capacity: dict[str, int] = Field(
        default_factory=lambda: {"click": 200, "like": 100, "collect": 100, "share": 50, "comment": 50}
    )
    impressions: int = Field(0, ge=0, description="capacity of the impression sequence; 0 = off")

    @model_validator(mode="after")
    def _check(self) -> LastNSettings:
        # the action names are checked against the event contract by filters.sequences.sequence_capacities
        if any(v < 1 or v > 100_000 for v in self.capacity.values()):
            msg = "lastn.capacity values must be between 1 and 100000"
            raise ValueError(msg)
        return self


class StatsSettings(_Section):
    """Windowed statistics answered from shared tiles."""

    windows: dict[str, str] = Field(
        default_factory=lambda: {"1h": "5m", "1d": "1h", "7d": "1d", "30d": "1d"},
        description="window -> the tile size it is answered from",
    )
    allowed_lateness_ms: int = Field(MS_PER_HOUR, ge=0)
    dedup_horizon_ms: int = Field(MS_PER_DAY, ge=0)
    prior_strength: float = Field(20.0, ge=0, description="pseudo-count of the Bayesian prior")

    @model_validator(mode="after")
    def _check_horizon(self) -> StatsSettings:
        if self.dedup_horizon_ms < self.allowed_lateness_ms:
            msg = "stats.dedup_horizon_ms must be >= stats.allowed_lateness_ms (late redeliveries would count twice)"
            raise ValueError(msg)
        return self
    prior_rates: dict[str, float] = Field(
        default_factory=lambda: {"ctr": 0.04, "like_rate": 0.1, "collect_rate": 0.05,
                                 "share_rate": 0.02, "comment_rate": 0.02}
    )


class JoinSettings(_Section):
    """The label join: impressions meet their actions in event time (docs/samples.md)."""

    enabled: bool = True
    windows_ms: dict[str, int] = Field(
        default_factory=lambda: {"click": 30 * 60_000, "like": 2 * MS_PER_HOUR, "collect": 2 * MS_PER_HOUR,
                                 "share": 2 * MS_PER_HOUR, "comment": 2 * MS_PER_HOUR},
        description="attribution window per action, from the impression's ts (event time)",
    )
    history: int = Field(50, ge=0, le=1000, description="clicked item ids per sample (newest first)")
    alpha: float = Field(1.0, gt=0, le=1, description="share of click-free impressions kept (negative downsampling)")
    idle_flush_s: float = Field(
        0.0, ge=0, description="live traffic: close every open window of a partition after this much wall time "
        "without events (0 = off: windows close on event time only, as in a replay)",
    )
    samples_per_record: int = Field(
        200, ge=1, le=10_000, description="samples packed into one samples-topic record (a JSON array of one "
        "partition's samples, bounded by producer.batch_max_bytes too); 1 = one sample per record",
    )
    idle_user_ms: int = Field(
        30 * MS_PER_DAY, ge=1, description="event time after which a user with nothing open forgets its clicks",
    )

    @model_validator(mode="after")
    def _check(self) -> JoinSettings:
        # the action names are checked against the event contract by filters.labels.JoinConfig
        if any(v < 0 for v in self.windows_ms.values()):
            msg = "join.windows_ms values must be >= 0"
            raise ValueError(msg)
        return self


class LearningSettings(_Section):
    """The online trainer, its embedding tables and model versions (docs/learning.md)."""

    dim: int = Field(32, ge=2, le=1024, description="width of ID embeddings and of the towers' output vectors")
    category_dim: int = Field(16, ge=1, le=1024)
    hidden: int = Field(64, ge=1, le=4096, description="hidden width of each tower's MLP")
    temperature: float = Field(0.05, gt=0, le=10, description="score = cosine / temperature")
    lr: float = Field(0.05, gt=0, description="Adagrad learning rate of the embedding tables")
    dense_lr: float = Field(0.01, gt=0, description="Adam learning rate of the towers in a full update")
    batch_size: int = Field(1024, ge=1, le=1_000_000, description="positive samples per training step")
    min_count: int = Field(2, ge=1, description="occurrences before an ID gets its own row (else the shared row)")
    max_users: int = Field(1_000_000, ge=1, description="row cap of the user table")
    max_items: int = Field(200_000, ge=1, description="row cap of the item table")
    max_categories: int = Field(10_000, ge=1)
    idle_evict_ms: int = Field(7 * MS_PER_DAY, ge=1, description="event time after which an unused row is freed")
    publish_every_s: float = Field(5.0, gt=0, le=3600, description="publish the touched rows this often")
    keep_versions: int = Field(
        3, ge=2, le=100, description="versions kept in Redis (rollback; ≥ 2: a reader mid-switch finds its own)")
    dedup_horizon_ms: int = Field(
        6 * MS_PER_HOUR, ge=0, description="event time over which the trainer remembers sample ids")
    eval_window: int = Field(20_000, ge=100, description="samples in the sliding window of the prequential metrics")
    eval_per_batch: int = Field(
        256, ge=0, description="positives per training batch ranked against the catalogue before training")
    metrics_port: int = Field(9109, ge=0, le=65535, description="the trainer's /metrics (0 = none)")
    gc_young: int = Field(
        50_000, ge=0, le=10_000_000, description="the trainer's allocations between young-generation garbage "
        "collections, as worker.gc_young (1.3x its samples/s); 0 = Python's defaults (infra.gc_tuning)")
    group: str = Field("recstream-trainer", description="the trainer's consumer group")
    seed: int = 7


class ServingSettings(_Section):
    """``recstream serve``: the HTTP service (docs/serving.md)."""

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    workers: int = Field(1, ge=1, le=64, description="uvicorn worker processes")
    api_key: str = Field("", description="non-empty: every /v1 route needs header X-API-Key with this value")
    max_candidates: int = Field(10_000, ge=1, description="items per request (unseen, features)")
    max_n: int = Field(1000, ge=1, description="largest last-N / k per request")
    max_body_bytes: int = Field(1_048_576, ge=1024, description="largest request body")


class MonitoringSettings(_Section):
    """``recstream infra up --monitoring``: a local Prometheus with recstream's alert rules."""

    prometheus_port: int = Field(9090, ge=1, le=65535)
    scrape_interval_s: float = Field(5.0, gt=0, le=300)
    canary_port: int = Field(9110, ge=0, le=65535, description="`recstream canary`'s /metrics, scraped (0 = not)")
    lag_exporter_port: int = Field(
        9111, ge=0, le=65535, description="`recstream lag --serve PORT`'s /metrics, scraped (0 = not)")


class ProducerSettings(_Section):
    """How :class:`stream.producer.EventProducer` packs events into batched records (docs/events.md)."""

    batch_max_events: int = Field(
        500, ge=1, le=10_000, description="events per record; 1 = one event per record (the old format)"
    )
    batch_max_bytes: int = Field(
        256 * 1024, ge=1024, le=960 * 1024,
        description="bytes per record; below the 1 MiB record limit and librdkafka's message.max.bytes (1e6)",
    )
    linger_ms: float = Field(
        5.0, ge=0, le=60_000, description="longest an event waits in a partial batch (checked on send/poll/flush)"
    )


class Settings(BaseSettings):
    """Everything configurable in recstream, in one frozen object."""

    model_config = SettingsConfigDict(
        env_prefix="RECSTREAM_",
        env_nested_delimiter="_",
        env_nested_max_split=1,
        frozen=True,
        extra="forbid",
    )

    home: Path = Field(default_factory=_default_home, description="state, logs, jars, pid files")
    kafka: KafkaSettings = KafkaSettings()
    redis: RedisSettings = RedisSettings()
    worker: WorkerSettings = WorkerSettings()
    bloom: BloomSettings = BloomSettings()
    lastn: LastNSettings = LastNSettings()
    stats: StatsSettings = StatsSettings()
    producer: ProducerSettings = ProducerSettings()
    join: JoinSettings = JoinSettings()
    learning: LearningSettings = LearningSettings()
    serving: ServingSettings = ServingSettings()
    monitoring: MonitoringSettings = MonitoringSettings()

    @model_validator(mode="after")
    def _horizons(self) -> Settings:
        horizon = max(self.bloom.retention_days * MS_PER_DAY, 30 * MS_PER_DAY)  # the 30d window is the longest
        if self.worker.max_age_ms and self.worker.max_age_ms < horizon:
            msg = (f"worker.max_age_ms ({self.worker.max_age_ms}) must cover the longest feature horizon "
                   f"({horizon} ms: bloom.retention_days and the 30d window), or be 0 (off)")
            raise ValueError(msg)
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_path = Path(os.environ.get("RECSTREAM_CONFIG", "recstream.toml"))
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=toml_path))


def load_settings(**overrides: Any) -> Settings:
    """Build the settings, turning validation problems into one readable :class:`ConfigError`.

    >>> load_settings(bloom={"fpr": 2})
    Traceback (most recent call last):
    ...
    infra.errors.ConfigError: invalid settings: bloom.fpr: Input should be less than 0.5
    """
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        msg = f"invalid settings: {problems}"
        raise ConfigError(msg) from None
    except (OSError, ValueError) as exc:
        msg = f"cannot read settings: {exc}"
        raise ConfigError(msg) from None


def to_env(settings: Settings) -> dict[str, str]:
    """Environment variables that rebuild exactly these settings in a child process.

    >>> env = to_env(Settings(kafka={"port": 19092}))
    >>> env["RECSTREAM_KAFKA_PORT"], Settings(**{}).kafka.port
    ('19092', 9092)
    """
    env = {"RECSTREAM_HOME": str(settings.home)}
    for section, values in settings.model_dump(mode="json", exclude={"home"}).items():
        for name, value in values.items():
            secret = getattr(getattr(settings, section), name)
            if isinstance(secret, SecretStr):  # dumped as "**********": the child needs the value
                value = secret.get_secret_value()
            env[f"RECSTREAM_{section.upper()}_{name.upper()}"] = (
                value if isinstance(value, str) else json.dumps(value)
            )
    return env
