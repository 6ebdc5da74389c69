"""Per-account throttling in Redis: a burst over the plan's limit gets 429 with
Retry-After for that account only."""

from __future__ import annotations

from typing import Any

import pytest

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
