"""Bank transfers are checked against the plan's price x months; an admin may accept a
different amount only with a reason, which the transaction keeps."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import auth, on_plan, register

ADMIN = {"X-Admin-Token": "test-admin-token"}


def on_growth(client: Any) -> tuple[str, str]:  # $149/month, 40,000 credits
    return on_plan(client, "growth", status="pending_payment")


def transfer(client: Any, account_id: str, **fields: Any) -> Any:
    body = {"payment_reference": "BT-1", "payer_name": "Jo Doe", **fields}
    return client.post(f"/v1/admin/accounts/{account_id}/bank-transfer", json=body, headers=ADMIN)


def balance(client: Any, key: str) -> dict[str, Any]:
    account: dict[str, Any] = client.get("/v1/account", headers=auth(key)).get_json()
    return {"credits": account["credits"]["balance"], "status": account["status"]}


@pytest.mark.parametrize(
    ("amount", "months", "expected"),
    [
        ("0.01", 24, "3576.00"),  # the case: a cent for two years
        ("148.99", 1, "149.00"),
        ("149.00", 3, "447.00"),
        ("1490.00", 1, "149.00"),  # a typo upwards is a mismatch too
    ],
)
def test_a_transfer_that_is_not_price_times_months_is_refused(
    client: Any, amount: str, months: int, expected: str
) -> None:
    key, account_id = on_growth(client)

    refused = transfer(client, account_id, amount=amount, period_months=months)

    assert refused.status_code == 409, refused.get_json()
    error = refused.get_json()["error"]
    assert error["code"] == "amount_mismatch"
    assert (error["amount"], error["expected_amount"]) == (amount, expected)
    assert "override_reason" in error["message"]
    assert balance(client, key) == {"credits": 2000, "status": "pending_payment"}
    history = client.get("/v1/credits/transactions", headers=auth(key)).get_json()["data"]
    assert [t["type"] for t in history] == ["registration"]


def test_an_override_with_a_reason_is_granted_and_the_reason_recorded(client: Any) -> None:
    key, account_id = on_growth(client)

    granted = transfer(
        client, account_id, amount="140.00", period_months=1,
        override_reason="Bank fee of 9.00 deducted in transit; customer confirmed by email.",
    )  # fmt: skip

    assert granted.status_code == 200, granted.get_json()
    txn = granted.get_json()["transaction"]
    assert (txn["type"], txn["amount"]) == ("bank_transfer", 40_000)
    assert txn["metadata"]["override_reason"].startswith("Bank fee of 9.00")
    assert (txn["metadata"]["amount"], txn["metadata"]["expected_amount"]) == ("140.00", "149.00")
    assert balance(client, key) == {"credits": 42_000, "status": "active"}
    listed = client.get("/v1/credits/transactions", headers=auth(key)).get_json()["data"][0]
    assert listed["metadata"]["override_reason"] == txn["metadata"]["override_reason"]


def test_the_exact_amount_needs_no_override(client: Any) -> None:
    key, account_id = on_growth(client)

    granted = transfer(client, account_id, amount="447", period_months=3)

    assert granted.status_code == 200, granted.get_json()
    metadata = granted.get_json()["transaction"]["metadata"]
    assert (metadata["expected_amount"], metadata["override_reason"]) == ("447.00", None)
    assert balance(client, key)["credits"] == 2000 + 3 * 40_000


def test_a_plan_without_a_list_price_needs_an_override(client: Any) -> None:
    _, account = register(client)
    client.patch(f"/v1/admin/accounts/{account['id']}", json={"plan": "enterprise"}, headers=ADMIN)

    refused = transfer(client, account["id"], amount="5000.00")
    granted = transfer(
        client, account["id"], amount="5000.00", override_reason="Enterprise contract EC-7"
    )

    assert refused.status_code == 409
    assert refused.get_json()["error"]["expected_amount"] == "0.00"
    assert granted.status_code == 200
    assert (
        granted.get_json()["transaction"]["metadata"]["override_reason"]
        == "Enterprise contract EC-7"
    )


@pytest.mark.parametrize("reason", ["", 7, "x" * 501])
def test_an_override_needs_a_real_reason(client: Any, reason: Any) -> None:
    key, account_id = on_growth(client)
    response = transfer(client, account_id, amount="1.00", override_reason=reason)
    assert response.status_code == 422
    assert response.get_json()["error"]["code"] == "invalid_request"
    assert balance(client, key)["credits"] == 2000
