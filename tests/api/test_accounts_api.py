"""Registration, key auth on every path, the account view, health and admin."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import assert_audit_clean
from tests.support import auth, register

ADMIN = {"X-Admin-Token": "test-admin-token"}


def test_register_seeds_free_trial_credits_with_one_grant(client: Any) -> None:
    key, account = register(client)

    assert key.startswith("aij_")
    assert account["status"] == "trial"
    assert account["plan"]["slug"] == "free-trial"
    assert account["credits"] == {"balance": 2000, "reserved": 0, "available": 2000}
    history = client.get("/v1/credits/transactions", headers=auth(key)).get_json()["data"]
    assert [(t["type"], t["amount"], t["balance_after"]) for t in history] == [
        ("registration", 2000, 2000)
    ]


@pytest.mark.parametrize(
    "body",
    [
        {"email": "not-an-email", "password": "long enough"},
        {"email": "a@b.co", "password": "short"},
        {"email": "a@b.co"},
        {"email": "a@b.co", "password": "long enough", "plan": "enterprise"},
        {"email": "a@b.co", "password": "long enough", "plan": "no-such-plan"},
        {"email": ["a@b.co"], "password": "long enough"},
    ],
)
def test_bad_registration_is_422(client: Any, body: dict[str, Any]) -> None:
    response = client.post("/v1/auth/register", json=body)
    assert response.status_code == 422
    assert response.get_json()["error"]["code"] == "invalid_request"


def test_duplicate_email_is_409(client: Any) -> None:
    register(client, "dup@example.com")
    response = client.post(
        "/v1/auth/register", json={"email": "DUP@example.com", "password": "long enough"}
    )
    assert response.status_code == 409
    assert response.get_json()["error"]["code"] == "email_taken"


def test_account_reports_plan_credits_and_four_limits(client: Any) -> None:
    key, _ = register(client)
    account = client.get("/v1/account", headers=auth(key)).get_json()

    assert account["plan"]["slug"] == "free-trial"
    assert set(account["limits"]) == {"sites", "users", "keywords", "ahrefs_queries"}
    assert account["limits"]["users"] == {"used": 1, "limit": 1}
    assert account["limits"]["ahrefs_queries"] == {"used": 0, "limit": 0}


KEY_ENDPOINTS = [
    ("get", "/v1/account"),
    ("get", "/v1/jobs"),
    ("post", "/v1/jobs"),
    ("get", "/v1/jobs/job_x"),
    ("post", "/v1/jobs/job_x/cancel"),
    ("get", "/v1/credits/transactions"),
]


@pytest.mark.parametrize(("method", "path"), KEY_ENDPOINTS)
@pytest.mark.parametrize("header", [None, "Bearer aij_wrong", "Basic abc", "Bearer "])
def test_missing_or_bad_key_is_401(client: Any, method: str, path: str, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    response = getattr(client, method)(path, headers=headers, json={})
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] in {"unauthorized", "invalid_api_key"}


@pytest.mark.parametrize("status", ["suspended", "cancelled"])
@pytest.mark.parametrize(("method", "path"), KEY_ENDPOINTS)
def test_suspended_and_cancelled_are_refused_everywhere(
    client: Any, status: str, method: str, path: str
) -> None:
    key, account = register(client)
    client.patch(f"/v1/admin/accounts/{account['id']}", json={"status": status}, headers=ADMIN)

    response = getattr(client, method)(path, headers=auth(key), json={})

    assert response.status_code == 403
    assert response.get_json()["error"]["code"] == f"account_{status}"


def test_pending_payment_may_still_use_its_credits(client: Any) -> None:
    key, account = register(client)
    client.patch(
        f"/v1/admin/accounts/{account['id']}", json={"status": "pending_payment"}, headers=ADMIN
    )
    response = client.post(
        "/v1/jobs",
        json={"operation": "image_generation", "input": {"prompt": "p"}},
        headers=auth(key),
    )
    assert response.status_code == 202


@pytest.mark.parametrize("headers", [{}, {"X-Admin-Token": "wrong"}])
def test_admin_endpoints_refuse_missing_or_wrong_token(
    client: Any, headers: dict[str, str]
) -> None:
    _, account = register(client)
    adjust = client.post(
        f"/v1/admin/accounts/{account['id']}/credits",
        json={"amount": 5, "reason": "x"},
        headers=headers,
    )
    patch = client.patch(
        f"/v1/admin/accounts/{account['id']}", json={"status": "active"}, headers=headers
    )
    assert adjust.status_code == patch.status_code == 401


def test_admin_adjustment_posts_a_transaction(client: Any) -> None:
    key, account = register(client)
    response = client.post(
        f"/v1/admin/accounts/{account['id']}/credits",
        json={"amount": -500, "reason": "refund reversal"},
        headers=ADMIN,
    )

    assert response.status_code == 200
    assert response.get_json()["credits"]["balance"] == 1500
    latest = client.get("/v1/credits/transactions", headers=auth(key)).get_json()["data"][0]
    assert (latest["type"], latest["amount"], latest["balance_after"]) == ("adjustment", -500, 1500)
    assert latest["description"] == "refund reversal"


def test_an_adjustment_with_an_idempotency_key_is_posted_once(client: Any) -> None:
    """An admin's retry after a timeout (the first one committed) must not post twice."""
    key, account = register(client)
    url = f"/v1/admin/accounts/{account['id']}/credits"
    body = {"amount": 500, "reason": "goodwill"}
    once = {**ADMIN, "Idempotency-Key": "ticket-42"}

    first = client.post(url, json=body, headers=once)
    retry = client.post(url, json=body, headers=once)
    other = client.post(url, json={**body, "amount": 600}, headers=once)
    unkeyed = [client.post(url, json=body, headers=ADMIN) for _ in range(2)]
    blank = client.post(url, json=body, headers={**ADMIN, "Idempotency-Key": "a\tb"})
    longest = {**ADMIN, "Idempotency-Key": "k" * 255}  # longer than a reference column
    long_keyed = [client.post(url, json=body, headers=longest) for _ in range(2)]

    assert (first.status_code, first.headers.get("Idempotent-Replayed")) == (200, None)
    assert (retry.status_code, retry.headers.get("Idempotent-Replayed")) == (200, "true")
    assert retry.get_json()["credits"]["balance"] == 2500
    assert (other.status_code, other.get_json()["error"]["code"]) == (409, "idempotency_conflict")
    assert [r.status_code for r in unkeyed] == [200, 200]  # no key: each one is posted
    assert blank.status_code == 422
    assert [(r.status_code, r.headers.get("Idempotent-Replayed")) for r in long_keyed] == [
        (200, None), (200, "true"),
    ]  # fmt: skip
    txns = client.get("/v1/credits/transactions", headers=auth(key)).get_json()["data"]
    assert [(t["type"], t["amount"]) for t in txns] == [
        ("adjustment", 500), ("adjustment", 500), ("adjustment", 500), ("adjustment", 500),
        ("registration", 2000),
    ]  # fmt: skip
    assert_audit_clean()


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"amount": 0, "reason": "nothing"}, 422),
        ({"amount": "5", "reason": "str"}, 422),
        ({"amount": 5}, 422),
        ({"amount": -5000, "reason": "too much"}, 402),
    ],
)
def test_bad_adjustment_is_refused(client: Any, body: dict[str, Any], status: int) -> None:
    key, account = register(client)
    response = client.post(f"/v1/admin/accounts/{account['id']}/credits", json=body, headers=ADMIN)
    assert response.status_code == status
    assert client.get("/v1/account", headers=auth(key)).get_json()["credits"]["balance"] == 2000


def test_admin_activation_grants_the_period_credits_once(client: Any) -> None:
    key, account = register(client)
    path = f"/v1/admin/accounts/{account['id']}"
    response = client.patch(path, json={"status": "active", "plan": "growth"}, headers=ADMIN)
    assert response.status_code == 200
    body = response.get_json()
    assert (body["status"], body["plan"]["slug"]) == ("active", "growth")
    # The trial's balance is kept, and activating a paid plan adds its period's credits.
    assert body["credits"]["balance"] == 2000 + 40000

    client.patch(path, json={"status": "active"}, headers=ADMIN)  # already active
    client.patch(path, json={"status": "suspended"}, headers=ADMIN)
    again = client.patch(path, json={"status": "active"}, headers=ADMIN).get_json()

    assert again["credits"]["balance"] == 42000  # the same period: not granted twice
    types = [
        t["type"] for t in client.get("/v1/credits/transactions", headers=auth(key)).json["data"]
    ]
    assert types == ["renewal", "registration"]


def test_admin_plan_change_alone_grants_nothing(client: Any) -> None:
    _, account = register(client)
    path = f"/v1/admin/accounts/{account['id']}"
    body = client.patch(path, json={"plan": "growth"}, headers=ADMIN).get_json()
    assert (body["status"], body["credits"]["balance"]) == ("trial", 2000)


@pytest.mark.parametrize(
    ("body", "status"),
    [({"status": "frozen"}, 422), ({"plan": "platinum"}, 404), ({"status": 3}, 422)],
)
def test_admin_patch_rejects_unknown_values(client: Any, body: dict[str, Any], status: int) -> None:
    """A status is one of a fixed set; a plan is data, and one that is not there is 404."""
    _, account = register(client)
    response = client.patch(f"/v1/admin/accounts/{account['id']}", json=body, headers=ADMIN)
    assert response.status_code == status


def test_admin_unknown_account_is_404(client: Any) -> None:
    response = client.patch(
        "/v1/admin/accounts/acc_missing", json={"status": "active"}, headers=ADMIN
    )
    assert response.status_code == 404


def test_healthz_checks_database_and_broker(client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    assert client.get("/healthz").get_json()["status"] == "ok"
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:1/0")
    down = client.get("/healthz")
    assert down.status_code == 503
    assert down.get_json()["broker"] == "unavailable"


def test_unknown_path_and_method_are_json(client: Any) -> None:
    missing = client.get("/v1/nothing-here")
    wrong = client.delete("/v1/account")
    assert missing.status_code == 404
    assert missing.get_json()["error"]["code"] == "not_found"
    assert wrong.status_code == 405
    assert wrong.get_json()["error"]["message"]


def test_a_database_outage_is_503_not_500(client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    key, _ = register(client)
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    response = client.get("/v1/account", headers=auth(key))
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "database_unavailable"
    assert response.headers["Retry-After"] == "1"


def test_a_redis_error_no_code_expected_is_503_not_500(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The safety net under every view: a Redis or broker error that escapes is a 503."""
    import redis
    from kombu.exceptions import OperationalError

    key, _ = register(client)
    for error in (redis.ConnectionError("refused"), OperationalError("broker down")):

        def fail(_account: Any, error: Exception = error) -> None:
            raise error

        monkeypatch.setattr("api.ratelimit.enforce", fail)
        response = client.get("/v1/account", headers=auth(key))

        assert response.status_code == 503
        assert response.get_json()["error"]["code"] == "broker_unavailable"
        assert response.headers["Retry-After"] == "5"
