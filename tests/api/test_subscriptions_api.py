"""Paid sign-up and plan changes: a paid plan waits for its first payment; upgrades take
effect when paid, downgrades at the period end (frozen clock: the lifecycle functions take
`now`), and a downgrade the account does not fit in is refused, naming what to remove."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from billing import lifecycle
from models import Account, AccountEvent, utcnow
from models.db import transaction
from tests.api.test_purchases_api import (
    ADMIN,
    balance,
    confirm,
    customer,
    deliver,
    stripe_on,  # noqa: F401 - a fixture
)
from tests.conftest import assert_audit_clean
from tests.support import auth, register

CLUSTERING = {"operation": "clustering", "input": {"keywords": ["running shoes"]}}


def sign_up(client: Any, plan: str, email: str = "paid@example.com") -> dict[str, Any]:
    response = client.post(
        "/v1/auth/register",
        json={"email": email, "password": "correct horse", "plan": plan},
    )
    assert response.status_code == 201, response.get_json()
    body: dict[str, Any] = response.get_json()
    return body


def test_paid_signup_waits_for_payment_then_starts_with_the_plans_credits(client: Any) -> None:
    body = sign_up(client, "growth")
    key, purchase = body["api_key"], body["purchase"]

    assert (body["account"]["status"], body["account"]["plan"]["slug"]) == (
        "pending_payment",
        "growth",
    )
    assert body["account"]["credits"]["balance"] == 0
    assert (purchase["kind"], purchase["status"], purchase["plan"]) == (
        "subscription",
        "pending",
        "growth",
    )
    assert (purchase["amount"], purchase["credits"]) == ("149.00", 40000)
    refused = client.post("/v1/jobs", json=CLUSTERING, headers=auth(key))
    assert refused.status_code == 402
    assert refused.get_json()["error"]["available"] == 0
    assert client.get("/v1/account", headers=auth(key)).status_code == 200

    assert confirm(client, purchase["id"], "BT-SIGNUP").get_json()["granted"] is True

    account = client.get("/v1/account", headers=auth(key)).get_json()
    assert (account["status"], account["plan"]["slug"]) == ("active", "growth")
    assert account["credits"]["balance"] == 40000
    assert account["paid_until"] is not None
    assert client.post("/v1/jobs", json=CLUSTERING, headers=auth(key)).status_code == 202
    assert confirm(client, purchase["id"], "BT-SIGNUP").get_json()["granted"] is False
    assert balance(client, key) < 40000 + 1  # the job's hold aside, nothing more arrived
    txns = client.get("/v1/credits/transactions", headers=auth(key)).get_json()["data"]
    assert [(t["type"], t["amount"]) for t in txns] == [("subscription", 40000)]


def test_paid_signup_through_stripe_checkout(
    client: Any,
    stripe_on: None,  # noqa: F811 - the fixture
    sim: Any,
) -> None:
    body = sign_up(client, "starter")
    key, purchase = body["api_key"], body["purchase"]
    assert purchase["checkout_url"].startswith(sim.url)

    assert deliver(client, customer(sim, purchase)).get_json()["outcome"] == "granted"

    account = client.get("/v1/account", headers=auth(key)).get_json()
    assert (account["status"], account["credits"]["balance"]) == ("active", 10000)
    assert account["payment_method"] == "stripe"
    assert_audit_clean()


def test_free_plans_sign_up_as_before(client: Any) -> None:
    body = sign_up(client, "free")
    assert "purchase" not in body
    assert (body["account"]["status"], body["account"]["credits"]["balance"]) == ("trial", 2000)


def test_an_upgrade_takes_effect_when_paid(client: Any) -> None:
    key, _ = register(client)

    asked = client.post("/v1/account/plan", json={"plan": "starter"}, headers=auth(key))

    assert asked.status_code == 200, asked.get_json()
    change = asked.get_json()["change"]
    assert (change["kind"], change["effective_at"]) == ("upgrade", None)
    assert asked.get_json()["account"]["plan"]["slug"] == "free-trial"
    assert balance(client, key) == 2000

    confirm(client, change["purchase"]["id"])

    account = client.get("/v1/account", headers=auth(key)).get_json()
    assert (account["status"], account["plan"]["slug"]) == ("active", "starter")
    assert account["credits"]["balance"] == 2000 + 10000
    assert_audit_clean()


def _on_growth(client: Any) -> tuple[str, str]:
    key, account = register(client, "grower@example.com")
    client.patch(
        f"/v1/admin/accounts/{account['id']}",
        json={"plan": "growth", "status": "active"},
        headers=ADMIN,
    )
    site = client.post("/v1/sites", json={"name": "blog"}, headers=auth(key)).get_json()["id"]
    words = [f"keyword {n}" for n in range(1001)]  # Starter allows 1,000
    added = client.post(
        "/v1/keywords", json={"site_id": site, "keywords": words}, headers=auth(key)
    )
    assert added.status_code == 201, added.get_json()
    return key, site


def test_a_downgrade_is_refused_while_over_a_limit_then_waits_for_the_period_end(
    client: Any,
) -> None:
    key, site = _on_growth(client)

    refused = client.post("/v1/account/plan", json={"plan": "starter"}, headers=auth(key))

    assert refused.status_code == 409
    error = refused.get_json()["error"]
    assert error["code"] == "plan_limits_exceeded"
    assert error["over"] == {"keywords": {"used": 1001, "limit": 1000, "remove": 1}}
    assert "Remove 1 keywords" in error["message"]

    listing = client.get(f"/v1/keywords?site_id={site}&limit=1", headers=auth(key)).get_json()
    client.delete(f"/v1/keywords/{listing['data'][0]['id']}", headers=auth(key))
    accepted = client.post("/v1/account/plan", json={"plan": "starter"}, headers=auth(key))

    assert accepted.status_code == 200, accepted.get_json()
    change, account = accepted.get_json()["change"], accepted.get_json()["account"]
    assert (change["kind"], change["purchase"]) == ("downgrade", None)
    assert change["effective_at"] == account["period_end"]
    assert (account["plan"]["slug"], account["scheduled_plan"]) == ("growth", "starter")
    # While it waits, the account cannot grow out of the plan it is moving to.
    more = client.post("/v1/keywords", json={"site_id": site, "keyword": "x"}, headers=auth(key))
    assert more.status_code == 403
    assert "Starter plan you move to" in more.get_json()["error"]["message"]

    period_end = datetime.fromisoformat(account["period_end"])
    with transaction() as session:
        lifecycle.renew_credits(session, period_end - timedelta(seconds=1))
    before = client.get("/v1/account", headers=auth(key)).get_json()
    with transaction() as session:
        lifecycle.renew_credits(session, period_end + timedelta(minutes=1))
    after = client.get("/v1/account", headers=auth(key)).get_json()

    assert before["plan"]["slug"] == "growth"
    assert (after["plan"]["slug"], after["scheduled_plan"]) == ("starter", None)
    assert after["period_start"] == account["period_end"]
    # The new period is renewed on the new plan: Starter's 10,000 credits.
    assert after["credits"]["balance"] == before["credits"]["balance"] + 10000
    assert_audit_clean()


def test_staying_calls_off_a_waiting_downgrade(client: Any) -> None:
    key, account = register(client)
    client.patch(f"/v1/admin/accounts/{account['id']}", json={"plan": "growth"}, headers=ADMIN)
    client.post("/v1/account/plan", json={"plan": "starter"}, headers=auth(key))

    kept = client.post("/v1/account/plan", json={"plan": "growth"}, headers=auth(key))
    again = client.post("/v1/account/plan", json={"plan": "growth"}, headers=auth(key))

    assert kept.get_json()["change"]["kind"] == "kept"
    assert kept.get_json()["account"]["scheduled_plan"] is None
    assert again.status_code == 409  # nothing waits now: already on Growth


def test_a_lapsed_prepaid_account_pays_for_its_plan_again(client: Any) -> None:
    body = sign_up(client, "starter")
    key = body["api_key"]
    confirm(client, body["purchase"]["id"])
    paid_until = datetime.fromisoformat(
        client.get("/v1/account", headers=auth(key)).get_json()["paid_until"]
    )
    with transaction() as session:
        lifecycle.renew_credits(session, paid_until + timedelta(minutes=1))
    assert client.get("/v1/account", headers=auth(key)).get_json()["status"] == "pending_payment"

    again = client.post("/v1/account/plan", json={"plan": "starter"}, headers=auth(key))
    confirm(client, again.get_json()["change"]["purchase"]["id"], "BT-2")

    account = client.get("/v1/account", headers=auth(key)).get_json()
    assert again.get_json()["change"]["kind"] == "renewal"
    assert (account["status"], account["credits"]["balance"]) == ("active", 20000)
    assert_audit_clean()


@pytest.mark.parametrize("plan", ["enterprise", "no-such-plan"])
def test_internal_or_unknown_plans_cannot_be_chosen(client: Any, plan: str) -> None:
    key, _ = register(client)
    response = client.post("/v1/account/plan", json={"plan": plan}, headers=auth(key))
    assert response.status_code == 422


def test_a_downgrade_to_a_free_plan_ends_the_prepaid_time(client: Any) -> None:
    body = sign_up(client, "starter")
    key = body["api_key"]
    confirm(client, body["purchase"]["id"])
    client.post("/v1/account/plan", json={"plan": "free"}, headers=auth(key))
    period_end = client.get("/v1/account", headers=auth(key)).get_json()["period_end"]

    with transaction() as session:
        lifecycle.renew_credits(session, datetime.fromisoformat(period_end) + timedelta(hours=1))

    account = client.get("/v1/account", headers=auth(key)).get_json()
    assert (account["plan"]["slug"], account["status"], account["paid_until"]) == (
        "free",
        "active",
        None,
    )
    assert account["credits"]["balance"] == 10000  # free plans are not renewed
    assert_audit_clean()


def test_an_admin_activation_and_the_renewal_credit_a_period_once(client: Any) -> None:
    key, account = register(client)
    start = datetime.fromisoformat(account["period_start"])
    with transaction() as session:  # the trial's first period rolls over, nothing renewed
        lifecycle.renew_credits(session, start + timedelta(days=32))
    client.patch(
        f"/v1/admin/accounts/{account['id']}",
        json={"plan": "growth", "status": "active"},
        headers=ADMIN,
    )
    with transaction() as session:  # the same period: the activation already credited it
        lifecycle.renew_credits(session, start + timedelta(days=33))

    txns = client.get("/v1/credits/transactions", headers=auth(key)).get_json()["data"]
    assert [(t["type"], t["amount"]) for t in txns] == [("renewal", 40000), ("registration", 2000)]
    assert_audit_clean()


def test_an_activation_after_the_period_ended_credits_the_period_of_now_once(
    client: Any,
) -> None:
    """The period ended 10 days ago and the hourly rollover has not run: the activation
    credits the period containing now (not the month already over, which the renewal
    would then follow with this one)."""
    key, account = register(client)
    ended = utcnow() - timedelta(days=10)
    with transaction() as session:
        session.execute(
            update(Account)
            .where(Account.id == account["id"])
            .values(period_start=ended - timedelta(days=30), period_end=ended)
        )

    client.patch(
        f"/v1/admin/accounts/{account['id']}",
        json={"plan": "growth", "status": "active"},
        headers=ADMIN,
    )
    with transaction() as session:
        lifecycle.renew_credits(session, utcnow() + timedelta(minutes=1))

    after = client.get("/v1/account", headers=auth(key)).get_json()
    start, end = (datetime.fromisoformat(after[k]) for k in ("period_start", "period_end"))
    assert start <= utcnow() < end
    txns = client.get("/v1/credits/transactions", headers=auth(key)).get_json()["data"]
    assert [(t["type"], t["amount"]) for t in txns] == [("renewal", 40000), ("registration", 2000)]
    assert txns[0]["metadata"]["period_start"] == after["period_start"]
    assert_audit_clean()


def test_reactivating_a_suspension_after_the_prepaid_end_asks_for_payment(client: Any) -> None:
    """Suspended while prepaid by a bank transfer; the prepaid time ended half an hour
    ago and the hourly rollover has not run. The admin's reactivation grants no month
    nobody paid for: the account is asked to pay, as the rollover would have asked."""
    key, account = register(client)
    url = f"/v1/admin/accounts/{account['id']}"
    client.patch(url, json={"plan": "growth", "status": "pending_payment"}, headers=ADMIN)
    payment = {"payment_reference": "BT-9", "amount": "149.00", "payer_name": "Jo Doe"}
    assert client.post(f"{url}/bank-transfer", json=payment, headers=ADMIN).status_code == 200
    assert client.patch(url, json={"status": "suspended"}, headers=ADMIN).status_code == 200
    ended = utcnow() - timedelta(minutes=30)
    with transaction() as session:
        session.execute(
            update(Account)
            .where(Account.id == account["id"])
            .values(period_start=ended - timedelta(days=31), period_end=ended, paid_until=ended)
        )

    answer = client.patch(url, json={"status": "active"}, headers=ADMIN)

    assert answer.status_code == 200, answer.get_json()
    body = answer.get_json()
    assert (body["status"], body["credits"]["balance"]) == ("pending_payment", 2000 + 40000)
    assert datetime.fromisoformat(body["period_start"]) == ended
    txns = client.get("/v1/credits/transactions", headers=auth(key)).get_json()["data"]
    assert [t["type"] for t in txns] == ["bank_transfer", "registration"]
    assert_audit_clean()


def test_an_admin_plan_change_calls_off_the_owners_waiting_downgrade(client: Any) -> None:
    """Owner schedules Growth -> Starter; an admin then moves the account to Scale: the
    rollover keeps Scale (the downgrade would otherwise undo the admin's change)."""
    key, account = register(client)
    client.patch(f"/v1/admin/accounts/{account['id']}", json={"plan": "growth"}, headers=ADMIN)
    asked = client.post("/v1/account/plan", json={"plan": "starter"}, headers=auth(key))
    assert asked.get_json()["account"]["scheduled_plan"] == "starter"

    moved = client.patch(
        f"/v1/admin/accounts/{account['id']}", json={"plan": "scale"}, headers=ADMIN
    )

    assert moved.status_code == 200, moved.get_json()
    after = client.get("/v1/account", headers=auth(key)).get_json()
    assert (after["plan"]["slug"], after["scheduled_plan"]) == ("scale", None)
    with transaction() as session:
        lifecycle.roll_over_periods(
            session, datetime.fromisoformat(after["period_end"]) + timedelta(minutes=1)
        )
        recorded = session.scalars(
            select(AccountEvent.data).where(
                AccountEvent.account_id == account["id"], AccountEvent.type == "plan_changed"
            )
        ).all()
    assert client.get("/v1/account", headers=auth(key)).get_json()["plan"]["slug"] == "scale"
    assert {
        "from": "growth",
        "to": "scale",
        "reason": "admin",
        "scheduled_plan_cancelled": "starter",
    } in recorded


def _on_a_retired_plan(client: Any, path: str) -> tuple[str, str]:
    """A free-trial account whose plan an admin retired: (its credential, account id)."""
    key, account = register(client, "retired@example.com")
    client.patch("/v1/admin/plans/free-trial", json={"is_active": False}, headers=ADMIN)
    if path == "api_key":
        return key, account["id"]
    login = client.post(
        "/v1/auth/login", json={"email": "retired@example.com", "password": "correct horse"}
    )
    assert login.status_code == 200, login.get_json()
    return login.get_json()["token"], account["id"]


@pytest.mark.parametrize("path", ["api_key", "login_token"])
def test_an_account_on_a_retired_plan_switches_to_a_free_plan_at_once(
    client: Any, path: str
) -> None:
    credential, _ = _on_a_retired_plan(client, path)
    assert client.get("/v1/sites", headers=auth(credential)).status_code == 402

    chosen = client.post("/v1/account/plan", json={"plan": "free"}, headers=auth(credential))

    assert chosen.status_code == 200, chosen.get_json()
    change, account = chosen.get_json()["change"], chosen.get_json()["account"]
    assert (change["kind"], change["plan"], change["purchase"]) == ("downgrade", "free", None)
    assert change["effective_at"] is not None
    assert (account["plan"]["slug"], account["scheduled_plan"]) == ("free", None)
    assert client.get("/v1/sites", headers=auth(credential)).status_code == 200


@pytest.mark.parametrize("path", ["api_key", "login_token"])
def test_an_account_on_a_retired_plan_pays_for_a_paid_one(client: Any, path: str) -> None:
    credential, _ = _on_a_retired_plan(client, path)

    chosen = client.post("/v1/account/plan", json={"plan": "starter"}, headers=auth(credential))

    assert chosen.status_code == 200, chosen.get_json()
    change = chosen.get_json()["change"]
    assert (change["kind"], change["purchase"]["status"]) == ("upgrade", "pending")
    assert client.get("/v1/sites", headers=auth(credential)).status_code == 402  # until paid

    confirm(client, change["purchase"]["id"])

    account = client.get("/v1/account", headers=auth(credential)).get_json()
    assert (account["status"], account["plan"]["slug"]) == ("active", "starter")
    assert account["credits"]["balance"] == 2000 + 10000
    assert client.get("/v1/sites", headers=auth(credential)).status_code == 200
    assert_audit_clean()


def test_a_retired_plan_cannot_be_chosen_again(client: Any) -> None:
    key, _ = _on_a_retired_plan(client, "api_key")
    again = client.post("/v1/account/plan", json={"plan": "free-trial"}, headers=auth(key))
    assert again.status_code == 422


def test_an_unpaid_plan_gives_no_keyword_research_and_no_top_ups(
    client: Any, sim_control: Any
) -> None:
    """A paid sign-up that never pays keeps its account, not the plan's paid extras:
    Ahrefs queries cost us money, and top-ups are priced by a plan nobody paid for."""
    body = sign_up(client, "scale")
    key, purchase = body["api_key"], body["purchase"]

    research = client.post("/v1/keyword-research", json={"seed": "shoes"}, headers=auth(key))
    topup = client.post("/v1/credits/topup", json={"credits": 500}, headers=auth(key))

    for refused in (research, topup):
        assert refused.status_code == 402, refused.get_json()
        error = refused.get_json()["error"]
        assert (error["code"], error["reason"], error["plan"]) == (
            "subscription_required",
            "payment_pending",
            "scale",
        )
        assert "awaiting payment" in error["message"]
    assert sim_control.get("/_sim/stats").json()["requests"]["ahrefs"] == 0
    assert client.get("/v1/billing/payments", headers=auth(key)).get_json()["data"] == [
        client.get(f"/v1/billing/payments/{purchase['id']}", headers=auth(key)).get_json()[
            "purchase"
        ]
    ]  # no top-up purchase was written

    assert confirm(client, purchase["id"], "BT-SCALE").get_json()["granted"] is True
    research = client.post("/v1/keyword-research", json={"seed": "shoes"}, headers=auth(key))
    assert research.status_code == 200, research.get_json()
    assert research.get_json()["queries"]["used"] == 1
    topup = client.post("/v1/credits/topup", json={"credits": 500}, headers=auth(key))
    assert topup.status_code == 201, topup.get_json()
    assert_audit_clean()


def test_a_plan_purchase_grants_what_it_sold_not_the_plan_as_edited_since(
    client: Any,
) -> None:
    """Starter sold at 10,000 credits; an admin cuts the plan to 5,000 (or to none)
    before the payment arrives: the customer gets the 10,000 paid for, and the audit
    agrees."""
    key, _ = register(client)
    asked = client.post("/v1/account/plan", json={"plan": "starter"}, headers=auth(key))
    purchase = asked.get_json()["change"]["purchase"]
    assert purchase["credits"] == 10000
    edited = client.patch("/v1/admin/plans/starter", json={"included_credits": 0}, headers=ADMIN)
    assert edited.status_code == 200, edited.get_json()

    paid = confirm(client, purchase["id"], "BT-STARTER")

    assert paid.status_code == 200, paid.get_json()
    assert paid.get_json()["granted"] is True
    txns = client.get("/v1/credits/transactions", headers=auth(key)).get_json()["data"]
    assert ("subscription", 10000) in [(t["type"], t["amount"]) for t in txns]
    assert_audit_clean()


@pytest.mark.parametrize("stop", ["suspended", "cancelled"])
def test_a_payment_does_not_lift_an_admins_stop(client: Any, stop: str) -> None:
    """The customer pays a checkout opened before the admin suspended the account: the
    credits are granted, the account stays as the admin left it."""
    key, account = register(client)
    purchase = client.post(
        "/v1/account/plan", json={"plan": "starter"}, headers=auth(key)
    ).get_json()["change"]["purchase"]
    stopped = client.patch(
        f"/v1/admin/accounts/{account['id']}", json={"status": stop}, headers=ADMIN
    )
    assert stopped.status_code == 200, stopped.get_json()

    assert confirm(client, purchase["id"], "BT-LATE").get_json()["granted"] is True

    assert client.get("/v1/account", headers=auth(key)).status_code == 403
    seen = client.get(f"/v1/admin/accounts/{account['id']}", headers=ADMIN).get_json()
    assert seen["status"] == stop
    assert seen["credits"]["balance"] == 2000 + 10000
    assert_audit_clean()


def test_a_payment_lifts_a_trial_that_merely_expired(client: Any) -> None:
    """A trial ends (suspended: trial_expired) while its upgrade's payment is on the way:
    the payment makes it active on the plan it paid for."""
    key, _ = register(client)
    purchase = client.post(
        "/v1/account/plan", json={"plan": "starter"}, headers=auth(key)
    ).get_json()["change"]["purchase"]
    with transaction() as session:
        lifecycle.expire_trials(session, datetime.now() + timedelta(days=400), timedelta(0))
    assert client.get("/v1/account", headers=auth(key)).status_code == 403

    assert confirm(client, purchase["id"], "BT-AFTER-TRIAL").get_json()["granted"] is True

    seen = client.get("/v1/account", headers=auth(key)).get_json()
    assert (seen["status"], seen["plan"]["slug"]) == ("active", "starter")
    assert_audit_clean()


def test_a_new_plan_choice_supersedes_the_one_waiting_for_payment(
    client: Any,
    stripe_on: None,  # noqa: F811 - the fixture
    sim: Any,
) -> None:
    """Starter asked for, then Scale: Starter's purchase fails `superseded` and its
    checkout is closed, so paying it later cannot move a Scale account back to Starter
    past the checks a downgrade gets."""
    key, _ = register(client)
    starter = client.post("/v1/account/plan", json={"plan": "starter"}, headers=auth(key))
    old = starter.get_json()["change"]["purchase"]
    scale = client.post("/v1/account/plan", json={"plan": "scale"}, headers=auth(key))
    assert scale.status_code == 200, scale.get_json()
    new = scale.get_json()["change"]["purchase"]

    seen = client.get(f"/v1/billing/payments/{old['id']}", headers=auth(key)).get_json()
    assert (seen["purchase"]["status"], seen["purchase"]["failure_reason"]) == (
        "failed",
        "superseded",
    )
    old_checkout = old["checkout_url"].rsplit("/", 1)[-1]
    at_stripe = httpx.get(f"{sim.url}/stripe/v1/checkout/sessions/{old_checkout}")
    assert at_stripe.json()["status"] == "expired"
    late = httpx.post(
        f"{sim.url}/_sim/stripe/checkout/sessions/{old_checkout}/events",
        json={"webhook_secret": "whsec_test_endpoint_secret"},
    )
    assert late.status_code == 400  # no longer payable
    assert confirm(client, old["id"], "BT-OLD").status_code == 409

    assert deliver(client, customer(sim, new)).get_json()["outcome"] == "granted"
    account = client.get("/v1/account", headers=auth(key)).get_json()
    assert (account["status"], account["plan"]["slug"]) == ("active", "scale")
    assert_audit_clean()


def test_retiring_a_plan_withdraws_its_purchases_waiting_for_payment(
    client: Any,
    stripe_on: None,  # noqa: F811 - the fixture
    sim: Any,
) -> None:
    """A customer must not pay for a plan that then refuses every job: retiring Starter
    fails its waiting purchase (`plan_retired`) and closes the checkout; another plan's
    purchase waits on."""
    key, _ = register(client)
    other_key, _ = register(client, "other@example.com")
    starter = client.post("/v1/account/plan", json={"plan": "starter"}, headers=auth(key))
    growth = client.post("/v1/account/plan", json={"plan": "growth"}, headers=auth(other_key))
    withdrawn = starter.get_json()["change"]["purchase"]
    kept = growth.get_json()["change"]["purchase"]

    retired = client.patch("/v1/admin/plans/starter", json={"is_active": False}, headers=ADMIN)

    assert retired.status_code == 200, retired.get_json()
    seen = client.get(f"/v1/billing/payments/{withdrawn['id']}", headers=auth(key)).get_json()
    assert (seen["purchase"]["status"], seen["purchase"]["failure_reason"]) == (
        "failed",
        "plan_retired",
    )
    checkout = withdrawn["checkout_url"].rsplit("/", 1)[-1]
    at_stripe = httpx.get(f"{sim.url}/stripe/v1/checkout/sessions/{checkout}").json()
    assert at_stripe["status"] == "expired"
    assert confirm(client, withdrawn["id"], "BT-RETIRED").status_code == 409
    other = client.get(f"/v1/billing/payments/{kept['id']}", headers=auth(other_key)).get_json()
    assert other["purchase"]["status"] == "pending"
    assert deliver(client, customer(sim, kept)).get_json()["outcome"] == "granted"
    assert client.get("/v1/account", headers=auth(key)).get_json()["plan"]["slug"] != "starter"
    assert_audit_clean()


def test_a_refused_plan_change_leaves_the_waiting_purchase_alone(client: Any) -> None:
    key, _ = register(client)
    starter = client.post("/v1/account/plan", json={"plan": "starter"}, headers=auth(key))
    waiting = starter.get_json()["change"]["purchase"]

    same = client.post("/v1/account/plan", json={"plan": "free-trial"}, headers=auth(key))

    assert same.status_code == 409
    seen = client.get(f"/v1/billing/payments/{waiting['id']}", headers=auth(key)).get_json()
    assert seen["purchase"]["status"] == "pending"


def test_an_unpaid_account_switches_plans_without_waiting_for_a_period_end(
    client: Any,
) -> None:
    """Signed up for Scale, never paid, chooses Growth: nothing paid to wait out, so
    Growth's purchase replaces Scale's (not a downgrade scheduled a month away with
    nothing left to pay); choosing Free then applies at once and ends the wait."""
    body = sign_up(client, "scale")
    key, scale = body["api_key"], body["purchase"]

    growth = client.post("/v1/account/plan", json={"plan": "growth"}, headers=auth(key))

    assert growth.status_code == 200, growth.get_json()
    change = growth.get_json()["change"]
    assert (change["kind"], change["effective_at"]) == ("upgrade", None)  # when paid
    assert change["purchase"]["plan"] == "growth"
    history = client.get("/v1/billing/payments", headers=auth(key)).get_json()["data"]
    assert {(p["plan"], p["status"]) for p in history} == {
        ("scale", "failed"),
        ("growth", "pending"),
    }
    assert scale["id"] in {p["id"] for p in history}

    free = client.post("/v1/account/plan", json={"plan": "free"}, headers=auth(key))

    assert free.get_json()["change"]["effective_at"] is not None
    account = client.get("/v1/account", headers=auth(key)).get_json()
    assert (account["status"], account["plan"]["slug"], account["scheduled_plan"]) == (
        "active",
        "free",
        None,
    )
    history = client.get("/v1/billing/payments", headers=auth(key)).get_json()["data"]
    assert {p["status"] for p in history} == {"failed"}

    confirm_growth = confirm(client, change["purchase"]["id"], "BT-LATE-GROWTH")
    assert confirm_growth.status_code == 409
    assert_audit_clean()
