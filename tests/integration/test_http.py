"""``recstream serve`` as a real uvicorn process over the real Redis: every route returns what the Python
client returns; bad input is a 4xx JSON error, an unreachable Redis a 503; the API key is enforced; and
schemathesis fuzzes every operation of the OpenAPI schema (no 5xx, responses conform)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings

from infra.settings import Settings
from serving.client import FeatureClient
from tests.conftest import ServicePair
from tests.serving_data import ITEMS, populate, start_serve

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def served(redis_service: ServicePair, tmp_path_factory: pytest.TempPathFactory,
           ) -> Iterator[tuple[str, Settings]]:
    client = redis.Redis.from_url(redis_service.redis_url)
    client.flushdb()
    home = tmp_path_factory.mktemp("serve")
    settings = populate(redis_service.settings, client, home)
    from tests.conftest import free_ports

    port = free_ports(1)[0]
    proc = start_serve(settings, port, home / "serve.log")
    yield f"http://127.0.0.1:{port}", settings
    proc.stop()


def _get(base: str, path: str, **params: Any) -> Any:
    r = httpx.get(base + path, params=params, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def test_routes_return_what_the_python_client_returns(served: tuple[str, Settings]) -> None:
    base, settings = served
    py = FeatureClient(settings=settings)
    items = [f"i{k}" for k in range(ITEMS)]
    for user in ("u1", "u7", "nobody"):
        assert _get(base, f"/v1/users/{user}/unseen", items=",".join(items))["unseen"] == py.filter_unseen(user, items)
        r = httpx.post(f"{base}/v1/users/{user}/unseen", json={"items": items}, timeout=10).json()
        assert r["unseen"] == py.filter_unseen(user, items)
        got = _get(base, f"/v1/users/{user}/last_n", action="click", n=20)["entries"]
        assert [(e["item_id"], e["ts"]) for e in got] == [(e.item_id, e.ts) for e in py.last_n(user, "click", 20)]
        assert _get(base, f"/v1/stats/user/{user}")["stats"] == py.stats("user", user)
        emb = _get(base, f"/v1/users/{user}/embedding")
        np.testing.assert_allclose(emb["user_vector"], py.user_vector(user).vector, atol=1e-6)
        body = {"user_id": user, "candidate_ids": items[:100]}
        f = httpx.post(f"{base}/v1/features", json=body, timeout=10).json()
        g = py.request_features(user, items[:100])
        assert f["unseen"] == g.unseen.tolist() and f["model_version"] == g.model_version
        np.testing.assert_allclose(f["scores"], g.scores, rtol=1e-5, atol=1e-6)
        cs = f["candidate_stats"]
        assert (cs["windows"], cs["names"]) == (list(g.candidate_stats.windows), list(g.candidate_stats.names))
        np.testing.assert_array_equal(cs["values"], g.candidate_stats.values)
        rec = _get(base, f"/v1/users/{user}/recommendations", k=10)
        assert [x["item_id"] for x in rec["items"]] == [i for i, _ in py.recommend(user, 10).items]
    assert _get(base, "/readyz")["ready"] is True
    assert "recstream_serving_seconds" in httpx.get(f"{base}/metrics", timeout=5).text
    py.close()


@pytest.mark.parametrize(("method", "path", "kwargs", "status"), [
    ("get", "/v1/users/u1/last_n", {"params": {"n": 0}}, 422),
    ("get", "/v1/users/u1/last_n", {"params": {"action": "purchase"}}, 422),
    ("get", "/v1/users/u1/recommendations", {"params": {"k": 100_000}}, 422),
    ("get", "/v1/stats/planet/x", {}, 400),
    ("post", "/v1/features", {"json": {"user_id": ""}}, 422),
    ("post", "/v1/features", {"json": {"user_id": "u1", "candidate_ids": ["i"] * 10_001}}, 413),
    ("post", "/v1/features", {"content": b"{not json", "headers": {"content-type": "application/json"}}, 422),
])
def test_bad_input_is_one_json_4xx(served: tuple[str, Settings], method: str, path: str,
                                   kwargs: dict[str, Any], status: int) -> None:
    r = getattr(httpx, method)(served[0] + path, timeout=10, **kwargs)
    assert r.status_code == status and set(r.json()) == {"error"}, r.text


def test_api_key_and_unreachable_redis(redis_service: ServicePair, tmp_path: Path) -> None:
    from tests.conftest import free_ports

    port, dead = free_ports(2)
    base = redis_service.settings
    settings = base.model_copy(update={
        "home": tmp_path, "redis": base.redis.model_copy(update={"url": f"redis://:pw@127.0.0.1:{dead}/0"}),
        "serving": base.serving.model_copy(update={"api_key": "s3cret"})})
    proc = start_serve(settings, port, tmp_path / "serve.log")
    try:
        url = f"http://127.0.0.1:{port}/v1/users/u1/last_n"
        assert httpx.get(url, timeout=10).status_code == 401
        r = httpx.get(url, headers={"X-API-Key": "s3cret"}, timeout=10)
        assert r.status_code == 503 and "cannot reach Redis at redis://:***@" in r.json()["error"]
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10)
        assert ready.status_code == 503 and ready.json()["ready"] is False
    finally:
        proc.stop()


def test_fuzz_every_operation_from_the_openapi_schema(served: tuple[str, Settings]) -> None:
    """Hypothesis cases per operation from the served OpenAPI schema (schemathesis' pytest plugin does not
    support this pytest, so the operations are driven here)."""
    schema = schemathesis.openapi.from_url(f"{served[0]}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 9
    for operation in operations:

        @given(case=operation.as_strategy())
        @hsettings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(case: Any) -> None:
            response = case.call(timeout=10)
            assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.text[:300]}"
            case.validate_response(response, checks=[schemathesis.checks.response_schema_conformance])

        run()
