"""Auth paths x account statuses, roles, and tenant isolation for every id-taking endpoint."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import auth, join_team, register

ADMIN = {"X-Admin-Token": "test-admin-token"}
STATUSES_ALLOWED = {
    "trial": True,
    "active": True,
    "pending_payment": True,
    "suspended": False,
    "cancelled": False,
}


def _login(client: Any, email: str) -> str:
    response = client.post("/v1/auth/login", json={"email": email, "password": "correct horse"})
    assert response.status_code == 200, response.get_json()
    token = response.get_json()["token"]
    assert token.startswith("tok_")
    return token


@pytest.mark.parametrize("status", list(STATUSES_ALLOWED))
@pytest.mark.parametrize("path", ["api_key", "login_token"])
def test_every_status_on_every_auth_path(client: Any, status: str, path: str) -> None:
    key, account = register(client, "status@example.com")
    credential = key if path == "api_key" else _login(client, "status@example.com")
    client.patch(f"/v1/admin/accounts/{account['id']}", json={"status": status}, headers=ADMIN)

    response = client.get("/v1/account", headers=auth(credential))
    job = client.post(
        "/v1/jobs",
        json={"operation": "image_generation", "input": {"prompt": "p"}},
        headers=auth(credential),
    )

    if STATUSES_ALLOWED[status]:
        assert response.status_code == 200
        assert response.get_json()["status"] == status
        assert job.status_code == 202
    else:
        assert response.status_code == job.status_code == 403
        assert response.get_json()["error"]["code"] == f"account_{status}"
        assert "contact support" in response.get_json()["error"]["message"]


@pytest.mark.parametrize("status", ["suspended", "cancelled"])
def test_login_itself_is_refused_for_inactive_accounts(client: Any, status: str) -> None:
    _, account = register(client, "gone@example.com")
    client.patch(f"/v1/admin/accounts/{account['id']}", json={"status": status}, headers=ADMIN)
    response = client.post(
        "/v1/auth/login", json={"email": "gone@example.com", "password": "correct horse"}
    )
    assert response.status_code == 403
    assert response.get_json()["error"]["code"] == f"account_{status}"


def test_wrong_password_and_tampered_token_are_401(client: Any) -> None:
    register(client, "pw@example.com")
    wrong = client.post("/v1/auth/login", json={"email": "pw@example.com", "password": "nope"})
    token = _login(client, "pw@example.com")
    tampered = client.get("/v1/account", headers=auth(token[:-2] + "xx"))
    assert wrong.status_code == 401
    assert tampered.status_code == 401


@pytest.mark.parametrize("path", ["api_key", "login_token"])
def test_inactive_plan_is_402_subscription_required(client: Any, path: str) -> None:
    key, _ = register(client, "plan@example.com")
    credential = key if path == "api_key" else _login(client, "plan@example.com")
    client.patch("/v1/admin/plans/free-trial", json={"is_active": False}, headers=ADMIN)

    response = client.get("/v1/sites", headers=auth(credential))

    assert response.status_code == 402
    assert response.get_json()["error"]["code"] == "subscription_required"
    assert "Active subscription required" in response.get_json()["error"]["message"]


# What an account on a retired plan needs to choose another (GET /v1/plans is public).
CHOOSING_PLAN = {("GET", "accounts.get_account"), ("POST", "accounts.change_plan")}


def _key_endpoints(app: Any) -> list[tuple[str, str, str]]:
    """(method, url, endpoint) of every view behind an API key or login token, its path
    arguments filled with placeholders (auth is checked before they are looked up)."""
    found = []
    for rule in app.url_map.iter_rules():
        if getattr(app.view_functions[rule.endpoint], "openapi_auth", None) != "apiKey":
            continue
        values = {
            name: 1 if type(rule._converters[name]).__name__ == "IntegerConverter" else "x_1"
            for name in rule.arguments
        }
        url = rule.build(values, append_unknown=False)[1]
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            found.append((method, url, rule.endpoint))
    return found


@pytest.mark.parametrize("path", ["api_key", "login_token"])
def test_a_retired_plan_reaches_only_what_choosing_a_plan_needs(
    app: Any, client: Any, path: str
) -> None:
    """Every auth path: the account and the plan change answer; everything else is 402.
    Logging in still works, so a password-only owner can get there too."""
    key, _ = register(client, "retired@example.com")
    client.patch("/v1/admin/plans/free-trial", json={"is_active": False}, headers=ADMIN)
    credential = key if path == "api_key" else _login(client, "retired@example.com")

    endpoints = _key_endpoints(app)
    answers = {
        (method, endpoint): client.open(url, method=method, json={}, headers=auth(credential))
        for method, url, endpoint in endpoints
    }

    assert set(answers) >= CHOOSING_PLAN
    assert len(answers) > 20
    for (method, endpoint), response in answers.items():
        code = response.get_json()["error"]["code"] if response.status_code >= 400 else None
        if (method, endpoint) in CHOOSING_PLAN:
            assert code != "subscription_required", (method, endpoint)
        else:
            assert (response.status_code, code) == (402, "subscription_required"), (
                method,
                endpoint,
            )
    account = client.get("/v1/account", headers=auth(credential))
    assert account.status_code == 200
    assert (account.get_json()["plan"]["slug"], account.get_json()["plan"]["is_active"]) == (
        "free-trial",
        False,
    )


@pytest.mark.parametrize("status", ["suspended", "cancelled"])
def test_a_suspended_account_on_a_retired_plan_cannot_choose_one(client: Any, status: str) -> None:
    key, account = register(client, "both@example.com")
    client.patch("/v1/admin/plans/free-trial", json={"is_active": False}, headers=ADMIN)
    client.patch(f"/v1/admin/accounts/{account['id']}", json={"status": status}, headers=ADMIN)

    response = client.post("/v1/account/plan", json={"plan": "free"}, headers=auth(key))

    assert response.status_code == 403
    assert response.get_json()["error"]["code"] == f"account_{status}"


def _invite(client: Any, owner_key: str, role: str) -> str:
    key: str = join_team(client, owner_key, f"{role}@example.com", role)["key"]
    return key


@pytest.fixture
def team(client: Any) -> dict[str, str]:
    owner, account = register(client, "owner@example.com")
    client.patch(
        f"/v1/admin/accounts/{account['id']}",
        json={"plan": "scale", "status": "active"},
        headers=ADMIN,
    )
    return {
        "owner": owner,
        **{role: _invite(client, owner, role) for role in ("admin", "editor", "viewer")},
    }


@pytest.mark.parametrize(
    ("method", "path", "body", "least_role"),
    [
        ("post", "/v1/jobs", {"operation": "image_generation", "input": {"prompt": "p"}}, "editor"),
        ("post", "/v1/keys", {"name": "ci"}, "admin"),
        ("get", "/v1/keys", None, "admin"),
        ("post", "/v1/team/invite", {"email": "new@example.com", "role": "viewer"}, "admin"),
        ("post", "/v1/sites", {"name": "s"}, "admin"),
        ("post", "/v1/credits/topup", {"credits": 1000}, "admin"),
        ("get", "/v1/billing/payments", None, "admin"),
        ("put", "/v1/account/budget", {"monthly_credits": 5000}, "owner"),
        ("put", "/v1/ai-settings", {"operation": "clustering", "model": "gpt-4o"}, "admin"),
        ("get", "/v1/jobs", None, "viewer"),
        ("get", "/v1/account", None, "viewer"),
        ("get", "/v1/usage/logs", None, "viewer"),
        (
            "post",
            "/v1/jobs/estimate",
            {"operation": "image_generation", "input": {"prompt": "p"}},
            "viewer",
        ),
        ("patch", "/v1/account", {"timezone": "Europe/Paris"}, "owner"),
    ],
)
def test_roles(
    client: Any,
    team: dict[str, str],
    method: str,
    path: str,
    body: dict[str, Any] | None,
    least_role: str,
) -> None:
    order = ["viewer", "editor", "admin", "owner"]
    for role in order:
        response = getattr(client, method)(path, json=body, headers=auth(team[role]))
        if order.index(role) >= order.index(least_role):
            assert response.status_code < 400, (role, response.get_json())
        else:
            assert response.status_code == 403, (role, response.get_json())
            assert response.get_json()["error"]["code"] == "forbidden"
        if response.status_code < 400 and path == "/v1/team/invite":
            break  # once-only: a second invite of the same email is refused by design


def test_keys_list_shows_prefix_only_and_revoke_works(client: Any) -> None:
    owner, _ = register(client)
    created = client.post("/v1/keys", json={"name": "ci"}, headers=auth(owner)).get_json()
    listing = client.get("/v1/keys", headers=auth(owner)).get_json()["data"]

    assert created["api_key"].startswith(created["prefix"])
    assert all("api_key" not in k and len(k["prefix"]) == 12 for k in listing)
    assert created["api_key"] not in str(listing)
    assert client.get("/v1/account", headers=auth(created["api_key"])).status_code == 200
    revoked = client.delete(f"/v1/keys/{created['id']}", headers=auth(owner))
    assert revoked.status_code == 200
    assert revoked.get_json()["revoked_at"] is not None
    assert client.get("/v1/account", headers=auth(created["api_key"])).status_code == 401


def test_tenant_isolation_for_every_id(client: Any) -> None:
    """Account B using A's ids gets 404 everywhere, and A's data is unchanged."""
    a_key, a_account = register(client, "a@example.com")
    client.patch(
        f"/v1/admin/accounts/{a_account['id']}",
        json={"plan": "starter", "status": "active"},
        headers=ADMIN,
    )
    b_key, _ = register(client, "b@example.com")
    site = client.post("/v1/sites", json={"name": "a-site"}, headers=auth(a_key)).get_json()["id"]
    keyword = client.post(
        "/v1/keywords", json={"site_id": site, "keyword": "a-kw"}, headers=auth(a_key)
    ).get_json()["added"][0]["id"]
    job = client.post(
        "/v1/jobs",
        json={"operation": "image_generation", "input": {"prompt": "p"}},
        headers=auth(a_key),
    ).get_json()["id"]
    key_id = client.post("/v1/keys", json={"name": "a"}, headers=auth(a_key)).get_json()["id"]

    attempts = [
        client.get(f"/v1/jobs/{job}", headers=auth(b_key)),
        client.post(f"/v1/jobs/{job}/cancel", headers=auth(b_key)),
        client.get(f"/v1/sites/{site}", headers=auth(b_key)),
        client.post("/v1/keywords", json={"site_id": site, "keyword": "b"}, headers=auth(b_key)),
        client.delete(f"/v1/keywords/{keyword}", headers=auth(b_key)),
        client.delete(f"/v1/keys/{key_id}", headers=auth(b_key)),
        client.post(
            "/v1/jobs",
            json={"operation": "image_generation", "site_id": site, "input": {"prompt": "p"}},
            headers=auth(b_key),
        ),
        client.get(f"/v1/usage/logs?site_id={site}", headers=auth(b_key)),
        client.get(f"/v1/usage/logs?job_id={job}", headers=auth(b_key)),
        client.get(f"/v1/images?job_id={job}", headers=auth(b_key)),
    ]

    assert [r.status_code for r in attempts] == [404] * len(attempts)
    assert client.get(f"/v1/jobs/{job}", headers=auth(a_key)).get_json()["status"] == "queued"
    kws = client.get("/v1/keywords", headers=auth(a_key)).get_json()["data"]
    assert [k["keyword"] for k in kws] == ["a-kw"]
    keys = client.get("/v1/keys", headers=auth(a_key)).get_json()["data"]
    assert all(k["revoked_at"] is None for k in keys)
    assert client.get("/v1/keywords", headers=auth(b_key)).get_json()["data"] == []
