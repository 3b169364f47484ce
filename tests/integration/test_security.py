"""Security basics against the real redis-server: a least-privilege ACL user for serving reads every family
(scripts included) and cannot write a byte; a password in the Redis URL never reaches an error line or a log."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner
from pydantic import SecretStr

from infra.settings import to_env
from recstream.cli import main
from serving.client import FeatureClient
from tests.conftest import ServicePair, free_ports
from tests.serving_data import populate

pytestmark = pytest.mark.integration
SECRET = "s3cret-Pa55"
# read-only: the read commands, scripts (whose commands the ACL checks too), nothing that writes
SERVING_ACL = ["on", f">{SECRET}", "~rs2:*", "resetchannels", "-@all", "+@read", "+@connection", "+evalsha",
               "+eval", "+script|load", "+info"]


@pytest.fixture
def serving_user(redis_service: ServicePair, redis_client: redis.Redis) -> Iterator[str]:
    redis_client.execute_command("ACL", "SETUSER", "serving", *SERVING_ACL)
    settings = redis_service.settings
    yield f"redis://serving:{SECRET}@{settings.redis.host}:{settings.redis.port}/{settings.redis.db}"
    redis_client.execute_command("ACL", "DELUSER", "serving")


def test_a_read_only_serving_user_reads_everything_and_writes_nothing(
        redis_service: ServicePair, redis_client: redis.Redis, serving_user: str, tmp_path: Path) -> None:
    settings = populate(redis_service.settings, redis_client, tmp_path)
    admin = FeatureClient(settings=settings)
    reader = FeatureClient(serving_user, settings=settings)
    users = ["u1", "u2", "u3"]
    for user in users:
        assert reader.last_n(user, "click", 20) == admin.last_n(user, "click", 20)
        assert reader.last_n(user, "click", 20, category="food") == admin.last_n(user, "click", 20, category="food")
        assert reader.stats("user", user) == admin.stats("user", user)
        items = [f"i{k}" for k in range(50)]
        assert reader.filter_unseen(user, items) == admin.filter_unseen(user, items)
        got, want = reader.request_features(user, items), admin.request_features(user, items)
        assert list(got.unseen) == list(want.unseen) and got.model_version == want.model_version
    assert reader.recommend("u1", k=5).items == admin.recommend("u1", k=5).items
    as_serving = redis.Redis.from_url(serving_user)
    for write in (lambda: as_serving.set("rs2:x", 1), lambda: as_serving.hset("rs2:layout", "a", 1),
                  lambda: as_serving.eval("return redis.call('SET', KEYS[1], 1)", 1, "rs2:x"),
                  lambda: as_serving.flushdb()):
        with pytest.raises(redis.RedisError, match=r"NOPERM|no permissions|can't run this command"):
            write()
    assert redis_client.get("rs2:x") is None


def test_a_redis_password_never_reaches_an_error_line_or_a_log(redis_service: ServicePair, tmp_path: Path) -> None:
    port = free_ports(1)[0]  # nothing listens there
    url = f"redis://serving:{SECRET}@127.0.0.1:{port}/0"
    base = redis_service.settings
    settings = base.model_copy(update={"home": tmp_path, "redis": base.redis.model_copy(update={"url": url})})
    for args in (["model", "show"], ["model", "list"], ["canary", "--rounds", "1", "--metrics-port", "0"]):
        result = CliRunner().invoke(main, args, obj={"settings": settings})
        assert result.exit_code != 0 and SECRET not in result.output, (args, result.output)
    env = {**os.environ, **to_env(settings)}
    worker = subprocess.run([sys.executable, "-m", "recstream.cli", "worker"], env=env, capture_output=True,
                            text=True, timeout=60, check=False)
    assert worker.returncode != 0
    assert SECRET not in worker.stdout + worker.stderr
    assert "serving:***@" in worker.stderr or "127.0.0.1" in worker.stderr, worker.stderr


def test_a_kafka_sasl_password_never_reaches_an_error_line_or_a_log(services: ServicePair, tmp_path: Path) -> None:
    """SASL settings against the suite's plaintext broker: the clients fail, in one line, without the secret."""
    base = services.settings
    settings = base.model_copy(update={"home": tmp_path, "kafka": base.kafka.model_copy(update={
        "security_protocol": "SASL_PLAINTEXT", "sasl_username": "svc", "sasl_password": SecretStr(SECRET)})})
    assert SECRET not in repr(settings) and SECRET not in str(settings.model_dump())
    assert to_env(settings)["RECSTREAM_KAFKA_SASL_PASSWORD"] == SECRET  # child processes still get it
    result = CliRunner().invoke(main, ["lag"], obj={"settings": settings})
    assert result.exit_code != 0 and SECRET not in result.output, result.output
    worker = subprocess.run([sys.executable, "-m", "recstream.cli", "worker"], env={**os.environ, **to_env(settings)},
                            capture_output=True, text=True, timeout=90, check=False)
    assert worker.returncode != 0 and SECRET not in worker.stdout + worker.stderr, worker.stderr[-2000:]
