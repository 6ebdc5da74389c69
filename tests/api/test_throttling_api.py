"""Per-account throttling in Redis: a burst over the plan's limit gets 429 with
Retry-After for that account only."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from ops.redis_server import RedisServer
from tests.support import auth, register

ADMIN = {"X-Admin-Token": "test-admin-token"}


@pytest.fixture
def limited(client: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    client.patch("/v1/admin/plans/free-trial", json={"requests_per_minute": 5}, headers=ADMIN)
    monkeypatch.setenv("RATE_LIMITS_ENABLED", "1")
    return client


def test_burst_over_the_limit_is_429_for_that_account_only(limited: Any) -> None:
    noisy, _ = register(limited, "noisy@example.com")
    quiet, _ = register(limited, "quiet@example.com")

    codes = [limited.get("/v1/account", headers=auth(noisy)).status_code for _ in range(8)]
    throttled = limited.get("/v1/account", headers=auth(noisy))

    assert codes == [200] * 5 + [429] * 3
    assert throttled.status_code == 429
    assert throttled.get_json()["error"]["code"] == "rate_limited"
    assert 1 <= int(throttled.headers["Retry-After"]) <= 60
    assert limited.get("/v1/account", headers=auth(quiet)).status_code == 200


def test_the_limit_is_per_account_not_per_key(limited: Any) -> None:
    owner, _ = register(limited, "team@example.com")
    second = limited.post("/v1/keys", json={"name": "second"}, headers=auth(owner))
    assert second.status_code == 201
    other_key = second.get_json()["api_key"]

    codes = [
        limited.get("/v1/jobs", headers=auth(k)).status_code
        for k in (owner, other_key, owner, other_key, owner)
    ]

    # 1 request made the key; 4 more fit in the account's 5, whichever key is used.
    assert codes == [200, 200, 200, 200, 429]


def test_the_limit_follows_the_plan(limited: Any) -> None:
    key, account = register(limited, "upgrade@example.com")
    limited.patch(f"/v1/admin/accounts/{account['id']}", json={"plan": "growth"}, headers=ADMIN)
    codes = [limited.get("/v1/account", headers=auth(key)).status_code for _ in range(20)]
    assert codes == [200] * 20


def test_redis_down_reads_fail_open_writes_get_503_and_nothing_is_a_500(
    limited: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A real Redis, stopped: the limiter's reads go through uncounted (one log line),
    writes are 503 with Retry-After and write nothing, /healthz names the broker; the
    same port back up and everything is counted again."""
    monkeypatch.setattr("api.jobs.enqueue_job", lambda job_id, operation: None)
    job = {"operation": "clustering", "input": {"keywords": ["a b", "a c"]}}
    with RedisServer() as redis_server:
        monkeypatch.setenv("REDIS_URL", redis_server.url)
        monkeypatch.setenv("CELERY_BROKER_URL", redis_server.url)
        key, _ = register(limited, "outage@example.com")
        before = limited.get("/v1/account", headers=auth(key)).get_json()["credits"]
        port = redis_server.port
        redis_server.stop()
        caplog.set_level(logging.WARNING, logger="api.ratelimit")

        reads = [limited.get(path, headers=auth(key)) for path in ("/v1/account", "/v1/jobs")]
        writes = [
            limited.post("/v1/jobs", json=job, headers=auth(key)),
            limited.post("/v1/sites", json={"name": "blog"}, headers=auth(key)),
            limited.put("/v1/webhooks/endpoint", json={"url": None}, headers=auth(key)),
        ]
        health = limited.get("/healthz")

        assert [r.status_code for r in reads] == [200, 200]
        assert reads[0].get_json()["credits"] == before
        assert [r.status_code for r in writes] == [503, 503, 503]
        for response in writes:
            assert response.get_json()["error"]["code"] == "rate_limiter_unavailable"
            assert response.headers["Retry-After"] == "5"
        assert "reads allowed uncounted" in caplog.text
        assert health.status_code == 503
        assert health.get_json()["broker"] == "unavailable"
        assert health.get_json()["error"]["unavailable"] == ["broker"]
        assert limited.get("/v1/jobs", headers=auth(key)).get_json()["data"] == []

        with RedisServer(port=port):
            assert limited.post("/v1/jobs", json=job, headers=auth(key)).status_code == 202
            assert limited.get("/healthz").status_code == 200
