"""Admin look-ups: find accounts by email, status or plan; one account in full; jobs
across accounts by status."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import auth, register

ADMIN = {"X-Admin-Token": "test-admin-token"}
JOB = {"operation": "image_generation", "input": {"prompt": "a red bicycle"}}


def all_pages(client: Any, path: str, limit: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    cursor = ""
    while True:
        sep = "&" if "?" in path else "?"
        body = client.get(f"{path}{sep}limit={limit}&cursor={cursor}", headers=ADMIN).get_json()
        rows += body["data"]
        if body["next_cursor"] is None:
            return rows
        cursor = body["next_cursor"]


def test_find_accounts_by_email_status_and_plan(client: Any) -> None:
    ids = {email: register(client, email)[1]["id"] for email in (
        "ana@shop.example", "Ana.B@other.example", "bob@shop.example",
    )}  # fmt: skip
    client.patch(f"/v1/admin/accounts/{ids['bob@shop.example']}", json={"status": "suspended"},
                 headers=ADMIN)  # fmt: skip

    by_email = client.get("/v1/admin/accounts?email=ANA", headers=ADMIN).get_json()
    assert {a["id"] for a in by_email["data"]} == {
        ids["ana@shop.example"], ids["Ana.B@other.example"],
    }  # fmt: skip
    exact = client.get("/v1/admin/accounts?email=bob@shop.example", headers=ADMIN).get_json()
    assert [a["id"] for a in exact["data"]] == [ids["bob@shop.example"]]
    assert exact["data"][0]["status"] == "suspended"
    wildcard = client.get("/v1/admin/accounts?email=%25", headers=ADMIN).get_json()
    assert wildcard["data"] == []  # LIKE wildcards are literal

    suspended = client.get("/v1/admin/accounts?status=suspended", headers=ADMIN).get_json()
    assert [a["id"] for a in suspended["data"]] == [ids["bob@shop.example"]]
    trial = client.get("/v1/admin/accounts?plan=free-trial&status=trial", headers=ADMIN)
    assert {a["id"] for a in trial.get_json()["data"]} == {
        ids["ana@shop.example"], ids["Ana.B@other.example"],
    }  # fmt: skip
    assert client.get("/v1/admin/accounts?plan=growth", headers=ADMIN).get_json()["data"] == []


def test_account_pages_are_exact_at_their_boundaries(client: Any) -> None:
    ids = [register(client, f"user{n}@example.com")[1]["id"] for n in range(5)]
    for limit in (1, 2, 5, 6):
        assert [a["id"] for a in all_pages(client, "/v1/admin/accounts", limit)] == ids[::-1]


@pytest.mark.parametrize(
    ("query", "field"),
    [("status=lost", "status"), ("limit=0", "limit"), ("cursor=!!", "cursor")],
)
def test_bad_filters_are_422(client: Any, query: str, field: str) -> None:
    for path in ("/v1/admin/accounts", "/v1/admin/jobs"):
        response = client.get(f"{path}?{query}", headers=ADMIN)
        assert response.status_code == 422
        assert field in response.get_json()["error"]["fields"]


def test_account_detail_shows_members_keys_jobs_and_transactions(client: Any) -> None:
    key, account = register(client, "owner@example.com")
    job = client.post("/v1/jobs", json=JOB, headers=auth(key)).get_json()

    detail = client.get(f"/v1/admin/accounts/{account['id']}", headers=ADMIN).get_json()
    assert detail["id"] == account["id"]
    assert [u["email"] for u in detail["users"]] == ["owner@example.com"]
    assert len(detail["api_keys"]) == 1
    assert key not in str(detail)  # only the prefix is ever shown
    assert [j["id"] for j in detail["recent_jobs"]] == [job["id"]]
    assert [t["type"] for t in detail["recent_transactions"]] == ["registration"]
    assert detail["credits"]["reserved"] == job["reserved_credits"]
    assert client.get("/v1/admin/accounts/acc_missing", headers=ADMIN).status_code == 404


def test_find_jobs_across_accounts(client: Any) -> None:
    first, a = register(client, "a@example.com")
    second, b = register(client, "b@example.com")
    job_a = client.post("/v1/jobs", json=JOB, headers=auth(first)).get_json()["id"]
    job_b = client.post("/v1/jobs", json=JOB, headers=auth(second)).get_json()["id"]
    client.post(f"/v1/jobs/{job_b}/cancel", headers=auth(second))

    queued = client.get("/v1/admin/jobs?status=queued", headers=ADMIN).get_json()["data"]
    assert [(j["id"], j["account_id"]) for j in queued] == [(job_a, a["id"])]
    of_b = client.get(f"/v1/admin/jobs?account_id={b['id']}", headers=ADMIN).get_json()["data"]
    assert [(j["id"], j["status"]) for j in of_b] == [(job_b, "cancelled")]
    assert [j["id"] for j in all_pages(client, "/v1/admin/jobs", 1)] == [job_b, job_a]


@pytest.mark.parametrize("path", ["/v1/admin/accounts", "/v1/admin/jobs", "/v1/admin/accounts/x"])
def test_look_ups_need_the_admin_token(client: Any, path: str) -> None:
    for headers in ({}, {"X-Admin-Token": "wrong"}):
        assert client.get(path, headers=headers).status_code == 401
