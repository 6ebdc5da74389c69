"""Admins see the provider usage nobody was charged for, with its totals."""

from __future__ import annotations

from typing import Any

from billing import unbilled
from billing.pricing import Usage
from models.db import transaction
from tests.factories import IMAGE, make_account, request, submit

ADMIN = {"X-Admin-Token": "test-admin-token"}


def record(reason: str, tokens: int) -> str:
    with transaction() as session:
        account = make_account(session, credits=100)
        job = submit(session, account.id, request(IMAGE))
        unbilled.record(
            session,
            account_id=account.id,
            job_id=job.id,
            operation="clustering",
            model_name="gpt-4o-mini",
            usage=Usage(tokens, tokens),
            hold=1000,
            reason=reason,
        )
        return job.id


def test_admins_list_and_count_unbilled_usage(client: Any) -> None:
    first = record("duplicate_run", 100)
    second = record("expired_uncovered", 300)

    body = client.get("/v1/admin/unbilled-usage", headers=ADMIN).get_json()

    assert [row["job_id"] for row in body["data"]] == [second, first]
    assert body["data"][0]["tokens_input"] == 300
    assert body["totals"]["count"] == 2
    assert body["totals"]["credits"] == 2 + 6
    assert body["totals"]["by_reason"] == {"duplicate_run": 1, "expired_uncovered": 1}
    only = client.get("/v1/admin/unbilled-usage?reason=duplicate_run", headers=ADMIN).get_json()
    assert [row["job_id"] for row in only["data"]] == [first]


def test_unbilled_usage_is_admin_only_and_validates_its_filter(client: Any) -> None:
    assert client.get("/v1/admin/unbilled-usage").status_code == 401
    bad = client.get("/v1/admin/unbilled-usage?reason=oops", headers=ADMIN)
    assert bad.status_code == 422
    assert "reason" in bad.get_json()["error"]["fields"]
