"""Plans as data, top-ups, bank transfers, and AI model settings through the API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from billing.periods import add_months
from tests.conftest import assert_audit_clean
from tests.support import auth, register

ADMIN = {"X-Admin-Token": "test-admin-token"}


def test_public_plans_hide_internal_and_inactive(client: Any) -> None:
    client.patch("/v1/admin/plans/growth", json={"is_active": False}, headers=ADMIN)
    slugs = [p["slug"] for p in client.get("/v1/plans").get_json()["data"]]
    assert slugs == ["free", "free-trial", "starter", "scale"]
    everything = client.get("/v1/admin/plans", headers=ADMIN).get_json()["data"]
    assert {p["slug"] for p in everything} >= {"enterprise", "growth"}


def test_admin_creates_and_updates_a_plan(client: Any) -> None:
    created = client.post(
        "/v1/admin/plans",
        headers=ADMIN,
        json={
            "slug": "agency",
            "name": "Agency",
            "price": "249.00",
            "included_credits": 60000,
            "max_sites": 10,
            "max_users": 4,
            "max_keywords": 10000,
            "max_ahrefs_queries": 300,
            "allow_credit_topup": True,
            "allowed_text_models": ["gpt-4o-mini", "gpt-4o"],
        },
    )
    assert created.status_code == 201, created.get_json()
    updated = client.patch("/v1/admin/plans/agency", json={"max_sites": 12}, headers=ADMIN)
    assert updated.get_json()["max_sites"] == 12
    assert updated.get_json()["max_users"] == 4
    assert "agency" in [p["slug"] for p in client.get("/v1/plans").get_json()["data"]]


@pytest.mark.parametrize(
    "body",
    [
        {"slug": "Bad Slug", "name": "x", "price": "1"},
        {"slug": "x", "name": "x", "price": "-1"},
        {"slug": "x", "name": "x", "price": "1", "allowed_text_models": ["hidream-full"]},
        {"slug": "x", "name": "x", "price": "1", "max_sites": -2},
        {"slug": "x", "name": "x", "price": "1", "colour": "red"},
        {"slug": "free", "name": "again", "price": "0"},
    ],
)
def test_bad_plans_are_refused(client: Any, body: dict[str, Any]) -> None:
    response = client.post("/v1/admin/plans", json=body, headers=ADMIN)
    assert response.status_code in (409, 422)
    assert response.get_json()["error"]["code"] in ("invalid_request", "already_exists")


def test_topup_only_where_the_plan_allows(client: Any) -> None:
    key, account = register(client)
    refused = client.post("/v1/credits/topup", json={"credits": 500}, headers=auth(key))
    assert refused.status_code == 403
    assert refused.get_json()["error"]["reason"] == "topup_not_allowed"

    client.patch(f"/v1/admin/accounts/{account['id']}", json={"plan": "starter"}, headers=ADMIN)
    bought = client.post("/v1/credits/topup", json={"credits": 500}, headers=auth(key))

    assert bought.status_code == 201, bought.get_json()
    purchase = bought.get_json()["purchase"]
    # Starter's extra_credit_price is $0.005 a credit: priced by us, pending until paid.
    assert (purchase["status"], purchase["credits"]) == ("pending", 500)
    assert (purchase["amount"], purchase["currency"]) == ("2.50", "usd")
    assert client.get("/v1/account", headers=auth(key)).get_json()["credits"]["balance"] == 2000


def test_bank_transfer_activates_once(client: Any) -> None:
    key, account = register(client)
    client.patch(
        f"/v1/admin/accounts/{account['id']}",
        json={"plan": "growth", "status": "pending_payment"},
        headers=ADMIN,
    )
    payment = {
        "payment_reference": "BT-2026-001",
        "amount": "149.00",
        "payer_name": "Jo Doe",
        "proof_url": "https://example.com/proof.pdf",
        "period_months": 1,
    }

    confirmed = client.post(
        f"/v1/admin/accounts/{account['id']}/bank-transfer", json=payment, headers=ADMIN
    )
    repeated = client.post(
        f"/v1/admin/accounts/{account['id']}/bank-transfer", json=payment, headers=ADMIN
    )

    assert confirmed.status_code == 200, confirmed.get_json()
    body = confirmed.get_json()
    assert body["status"] == "active"
    assert body["credits"]["balance"] == 2000 + 40000
    assert body["period_end"] > body["period_start"]
    txn = body["transaction"]
    assert txn["type"] == "bank_transfer"
    assert txn["metadata"]["payment_reference"] == "BT-2026-001"
    assert (txn["metadata"]["amount"], txn["metadata"]["payer_name"]) == ("149.00", "Jo Doe")
    assert repeated.status_code == 409
    assert repeated.get_json()["error"]["code"] == "duplicate_reference"
    balance = client.get("/v1/account", headers=auth(key)).get_json()["credits"]["balance"]
    assert balance == 42000


def test_bank_transfer_for_three_months_credits_three_months(client: Any) -> None:
    key, account = register(client)
    client.patch(f"/v1/admin/accounts/{account['id']}", json={"plan": "growth"}, headers=ADMIN)
    payment = {
        "payment_reference": "BT-2026-Q1", "amount": "447.00", "payer_name": "Jo Doe",
        "period_months": 3,
    }  # fmt: skip

    confirmed = client.post(
        f"/v1/admin/accounts/{account['id']}/bank-transfer", json=payment, headers=ADMIN
    )

    assert confirmed.status_code == 200, confirmed.get_json()
    body = confirmed.get_json()
    assert body["transaction"]["amount"] == 3 * 40000
    assert body["transaction"]["metadata"]["credits_per_month"] == 40000
    assert body["credits"]["balance"] == 2000 + 3 * 40000
    start = datetime.fromisoformat(body["period_start"])
    assert datetime.fromisoformat(body["period_end"]) == add_months(start, 1)
    assert datetime.fromisoformat(body["paid_until"]) == add_months(start, 3)
    seen = client.get("/v1/account", headers=auth(key)).get_json()
    assert (seen["status"], seen["paid_until"]) == ("active", body["paid_until"])


@pytest.mark.parametrize(
    "body",
    [
        {"payment_reference": "x", "amount": "0", "payer_name": "a"},
        {"payment_reference": "x", "amount": "10"},
        {"payment_reference": "x", "amount": "10", "payer_name": "a", "period_months": 0},
    ],
)
def test_bad_bank_transfer_is_422(client: Any, body: dict[str, Any]) -> None:
    _, account = register(client)
    response = client.post(
        f"/v1/admin/accounts/{account['id']}/bank-transfer", json=body, headers=ADMIN
    )
    assert response.status_code == 422


def test_ai_settings_within_the_plan(client: Any) -> None:
    key, account = register(client)
    forced = client.put(
        "/v1/ai-settings", json={"operation": "clustering", "model": "gpt-4o"}, headers=auth(key)
    )
    assert forced.status_code == 403
    assert forced.get_json()["error"]["code"] == "model_not_allowed"
    assert forced.get_json()["error"]["allowed"] == ["gpt-4o-mini"]

    client.patch(f"/v1/admin/accounts/{account['id']}", json={"plan": "growth"}, headers=ADMIN)
    chosen = client.put(
        "/v1/ai-settings", json={"operation": "clustering", "model": "gpt-4o"}, headers=auth(key)
    )
    assert chosen.status_code == 200
    clustering = chosen.get_json()["operations"]["clustering"]
    assert (clustering["model"], clustering["preferred"], clustering["forced"]) == (
        "gpt-4o",
        "gpt-4o",
        False,
    )
    wrong_type = client.put(
        "/v1/ai-settings", json={"operation": "clustering", "model": "dall-e-3"}, headers=auth(key)
    )
    assert wrong_type.status_code == 422


def test_a_suspend_and_reactivate_after_a_bank_transfer_grants_nothing_more(client: Any) -> None:
    key, account = register(client)
    url = f"/v1/admin/accounts/{account['id']}"
    client.patch(url, json={"plan": "growth", "status": "pending_payment"}, headers=ADMIN)
    payment = {"payment_reference": "BT-9", "amount": "149.00", "payer_name": "Jo Doe"}
    paid = client.post(f"{url}/bank-transfer", json=payment, headers=ADMIN)
    assert paid.status_code == 200, paid.get_json()

    for status in ("suspended", "active"):
        answer = client.patch(url, json={"status": status}, headers=ADMIN)
        assert answer.status_code == 200, answer.get_json()

    assert answer.get_json()["credits"]["balance"] == 2000 + 40000
    txns = client.get("/v1/credits/transactions", headers=auth(key)).get_json()["data"]
    assert [t["type"] for t in txns] == ["bank_transfer", "registration"]
    assert_audit_clean()
