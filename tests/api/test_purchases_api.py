"""Credits are bought, never typed in: a top-up is a pending purchase until a payment is
confirmed, by an admin or by a signed Stripe event (the real `stripe` SDK against the
simulator's Stripe stand-in), and each purchase grants once whatever arrives twice."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from api import admin as admin_api
from billing import purchases
from models import Account, AccountEvent, Purchase, utcnow
from models.db import transaction
from simulator.stripe_api import sign
from tests.conftest import assert_audit_clean
from tests.support import auth, register

ADMIN = {"X-Admin-Token": "test-admin-token"}
WEBHOOK_SECRET = "whsec_test_endpoint_secret"
WEBHOOK = "/v1/billing/stripe/webhook"


@pytest.fixture
def stripe_on(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Stripe configured; STRIPE_API_BASE defaults to the simulator's stand-in."""
    monkeypatch.setenv("STRIPE_API_KEY", "sk_test_simulated")
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET)


@pytest.fixture
def buyer(client: Any) -> tuple[str, str]:
    """An account on Starter (top-ups allowed, $0.005 a credit) with 2,000 trial credits."""
    key, account = register(client)
    client.patch(f"/v1/admin/accounts/{account['id']}", json={"plan": "starter"}, headers=ADMIN)
    return key, account["id"]


def balance(client: Any, key: str) -> int:
    return int(client.get("/v1/account", headers=auth(key)).get_json()["credits"]["balance"])


def topup(client: Any, key: str, credits: int = 1000) -> dict[str, Any]:
    response = client.post("/v1/credits/topup", json={"credits": credits}, headers=auth(key))
    assert response.status_code == 201, response.get_json()
    purchase: dict[str, Any] = response.get_json()["purchase"]
    return purchase


def customer(sim: Any, purchase: dict[str, Any], **event: Any) -> dict[str, Any]:
    """The simulator plays the customer at Stripe Checkout; returns the signed event."""
    session_id = purchase["checkout_url"].rsplit("/", 1)[-1]
    response = httpx.post(
        f"{sim.url}/_sim/stripe/checkout/sessions/{session_id}/events",
        json={"webhook_secret": WEBHOOK_SECRET, **event},
    )
    assert response.status_code == 200, response.text
    signed: dict[str, Any] = response.json()
    return signed


def deliver(client: Any, signed: dict[str, Any], signature: str | None = None) -> Any:
    return client.post(
        WEBHOOK,
        data=signed["payload"],
        content_type="application/json",
        headers={"Stripe-Signature": signature or signed["signature"]},
    )


def confirm(client: Any, purchase_id: str, reference: str = "BANK-001") -> Any:
    return client.post(
        f"/v1/admin/purchases/{purchase_id}/confirm",
        json={"payment_reference": reference},
        headers=ADMIN,
    )


def test_the_balance_moves_only_when_an_admin_confirms_and_only_once(
    client: Any, buyer: tuple[str, str]
) -> None:
    key, _ = buyer
    purchase = topup(client, key, 1000)

    assert (purchase["status"], purchase["credits"]) == ("pending", 1000)
    assert (purchase["amount"], purchase["currency"], purchase["checkout_url"]) == (
        "5.00",
        "usd",
        None,
    )
    assert balance(client, key) == 2000

    first = confirm(client, purchase["id"])
    second = confirm(client, purchase["id"])

    assert first.status_code == 200, first.get_json()
    assert first.get_json()["purchase"]["status"] == "paid"
    assert first.get_json()["granted"] is True
    assert second.status_code == 200
    assert second.get_json()["granted"] is False
    assert balance(client, key) == 3000
    txns = client.get("/v1/credits/transactions", headers=auth(key)).get_json()["data"]
    assert [(t["type"], t["amount"], t["reference"]) for t in txns[:1]] == [
        ("topup", 1000, purchase["id"])
    ]
    account = client.get("/v1/account", headers=auth(key)).get_json()
    assert account["payment_method"] == "manual"
    assert_audit_clean()


def test_stripe_checkout_then_webhook_grants_once_and_a_replay_changes_nothing(
    client: Any, buyer: tuple[str, str], stripe_on: None, sim: Any
) -> None:
    key, _ = buyer
    purchase = topup(client, key, 1000)
    assert purchase["checkout_url"].startswith(sim.url)
    assert purchase["method"] == "stripe"
    assert balance(client, key) == 2000

    signed = customer(sim, purchase)
    assert balance(client, key) == 2000  # paid at Stripe, not yet told

    first = deliver(client, signed)
    replay = deliver(client, signed)

    assert (first.status_code, first.get_json()["outcome"]) == (200, "granted")
    assert (replay.status_code, replay.get_json()["outcome"]) == (200, "already_paid")
    assert balance(client, key) == 3000
    paid = client.get(f"/v1/billing/payments/{purchase['id']}", headers=auth(key)).get_json()
    assert (paid["purchase"]["status"], paid["purchase"]["method"]) == ("paid", "stripe")
    assert paid["purchase"]["payment_reference"].startswith("pi_")
    assert confirm(client, purchase["id"]).get_json()["granted"] is False
    assert balance(client, key) == 3000
    assert_audit_clean()


def test_admin_confirmation_and_the_webhook_together_grant_once(
    client: Any, buyer: tuple[str, str], stripe_on: None, sim: Any
) -> None:
    key, _ = buyer
    purchase = topup(client, key, 1000)
    signed = customer(sim, purchase)  # the card payment is on its way...

    confirm(client, purchase["id"], "BANK-REF-7")  # ...when an admin confirms a transfer
    late = deliver(client, signed)

    assert (late.status_code, late.get_json()["outcome"]) == (200, "already_paid")
    assert balance(client, key) == 3000
    assert_audit_clean()


def refund_records(account_id: str) -> list[dict[str, Any]]:
    with transaction() as session:
        return [
            dict(event.data)
            for event in session.scalars(
                select(AccountEvent)
                .where(
                    AccountEvent.account_id == account_id,
                    AccountEvent.type == "payment_not_granted",
                )
                .order_by(AccountEvent.id)
            )
        ]


def test_a_card_payment_for_a_purchase_an_admin_confirmed_is_put_on_the_record_once(
    client: Any, buyer: tuple[str, str], stripe_on: None, sim: Any
) -> None:
    """The customer paid by card and by bank transfer, and the admin confirmed the
    transfer first: the card payment grants nothing, so the account's record must say to
    refund it (a log line alone got lost), once however often Stripe sends it."""
    key, account_id = buyer
    purchase = topup(client, key, 1000)
    signed = customer(sim, purchase)
    confirm(client, purchase["id"], "BANK-REF-8")

    assert deliver(client, signed).get_json()["outcome"] == "already_paid"
    assert deliver(client, signed).get_json()["outcome"] == "already_paid"  # a redelivery

    assert balance(client, key) == 3000
    records = refund_records(account_id)
    assert len(records) == 1, records
    assert (records[0]["purchase_id"], records[0]["action"]) == (purchase["id"], "refund")
    assert records[0]["payment_reference"].startswith("pi_")
    assert_audit_clean()


def test_a_replayed_stripe_event_puts_nothing_on_the_record(
    client: Any, buyer: tuple[str, str], stripe_on: None, sim: Any
) -> None:
    key, account_id = buyer
    purchase = topup(client, key, 1000)
    signed = customer(sim, purchase)

    assert deliver(client, signed).get_json()["outcome"] == "granted"
    assert deliver(client, signed).get_json()["outcome"] == "already_paid"

    assert balance(client, key) == 3000
    assert refund_records(account_id) == []


def test_forged_altered_or_stale_signatures_are_400_and_grant_nothing(
    client: Any, buyer: tuple[str, str], stripe_on: None, sim: Any
) -> None:
    key, _ = buyer
    purchase = topup(client, key, 1000)
    signed = customer(sim, purchase)
    stale = customer(sim, topup(client, key, 2000), timestamp=int(time.time()) - 3600)
    forged_signature = signed["signature"].replace("v1=", "v1=0")
    other_secret = httpx.post(  # a well-formed event signed with a secret we never issued
        f"{sim.url}/_sim/stripe/checkout/sessions/"
        f"{topup(client, key, 3000)['checkout_url'].rsplit('/', 1)[-1]}/events",
        json={"webhook_secret": "whsec_attacker"},
    ).json()

    answers = [
        deliver(client, signed, forged_signature),
        deliver(client, other_secret),
        deliver(client, stale),
        client.post(WEBHOOK, data=signed["payload"], content_type="application/json"),
        client.post(
            WEBHOOK,
            data=signed["payload"].replace('"amount_total": 500', '"amount_total": 5'),
            content_type="application/json",
            headers={"Stripe-Signature": signed["signature"]},
        ),
    ]

    assert [a.status_code for a in answers] == [400] * 5
    assert {a.get_json()["error"]["code"] for a in answers} == {"invalid_signature"}
    assert balance(client, key) == 2000
    history = client.get("/v1/billing/payments", headers=auth(key)).get_json()["data"]
    assert {p["status"] for p in history} == {"pending"}
    assert_audit_clean()


def test_an_expired_checkout_fails_the_purchase_and_grants_nothing(
    client: Any, buyer: tuple[str, str], stripe_on: None, sim: Any
) -> None:
    key, _ = buyer
    purchase = topup(client, key, 1000)

    answer = deliver(client, customer(sim, purchase, type="checkout.session.expired"))
    late_confirm = confirm(client, purchase["id"])

    assert answer.get_json()["outcome"] == "failed"
    assert late_confirm.status_code == 409
    assert late_confirm.get_json()["error"]["code"] == "purchase_not_pending"
    seen = client.get(f"/v1/billing/payments/{purchase['id']}", headers=auth(key)).get_json()
    assert (seen["purchase"]["status"], seen["purchase"]["failure_reason"]) == ("failed", "expired")
    assert balance(client, key) == 2000
    assert_audit_clean()


@pytest.mark.parametrize(
    ("event", "outcome", "balance_after"),
    [
        ("checkout.session.async_payment_failed", "failed", 2000),
        ("checkout.session.async_payment_succeeded", "granted", 3000),
    ],
)
def test_a_delayed_payment_is_granted_only_when_it_succeeds(
    client: Any,
    buyer: tuple[str, str],
    stripe_on: None,
    sim: Any,
    event: str,
    outcome: str,
    balance_after: int,
) -> None:
    """A bank debit completes the checkout unpaid; its later outcome decides."""
    key, _ = buyer
    purchase = topup(client, key, 1000)
    completed = customer(sim, purchase, delayed=True)
    assert deliver(client, completed).get_json()["outcome"] == "awaiting_payment"
    assert balance(client, key) == 2000

    assert deliver(client, customer(sim, purchase, type=event)).get_json()["outcome"] == outcome

    assert balance(client, key) == balance_after
    assert_audit_clean()


def test_an_async_success_event_for_an_unpaid_session_grants_nothing(
    client: Any, buyer: tuple[str, str], stripe_on: None, sim: Any
) -> None:
    """The event type alone is no proof: a correctly signed `async_payment_succeeded`
    whose session says unpaid (or expired) moves nothing."""
    key, _ = buyer
    purchase = topup(client, key, 1000)
    unpaid = customer(sim, purchase, delayed=True)
    event = json.loads(unpaid["payload"])
    event["type"] = "checkout.session.async_payment_succeeded"
    payload = json.dumps(event)
    signature = sign(payload, WEBHOOK_SECRET, int(time.time()))

    answer = deliver(client, {"payload": payload}, signature)

    assert answer.get_json()["outcome"] == "awaiting_payment"
    assert balance(client, key) == 2000
    assert_audit_clean()


def test_the_client_never_sets_amounts_or_references(client: Any, buyer: tuple[str, str]) -> None:
    key, _ = buyer
    bodies = [
        {"credits": 9_000_000, "payment_reference": "anything"},
        {"credits": 1000, "amount": "0.01"},
        {"credits": 1000, "status": "paid"},
        {"credits": 0},
        {"credits": 10},  # a top-up buys at least 500 credits (so it costs over $1.00)
    ]
    answers = [client.post("/v1/credits/topup", json=b, headers=auth(key)) for b in bodies]
    assert [a.status_code for a in answers] == [422] * 5
    assert "500" in answers[-1].get_json()["error"]["fields"]["credits"]
    assert balance(client, key) == 2000
    assert client.get("/v1/billing/payments", headers=auth(key)).get_json()["data"] == []


def test_stripe_down_fails_the_purchase_with_a_502(
    client: Any, buyer: tuple[str, str], stripe_on: None, sim_control: httpx.Client
) -> None:
    key, _ = buyer
    sim_control.post("/_sim/faults", json={"status": 500, "times": 3, "match": "line_items"})

    response = client.post("/v1/credits/topup", json={"credits": 1000}, headers=auth(key))

    assert response.status_code == 502
    assert response.get_json()["error"]["code"] == "payment_provider_unavailable"
    history = client.get("/v1/billing/payments", headers=auth(key)).get_json()["data"]
    assert [(p["status"], p["failure_reason"]) for p in history] == [
        ("failed", "payment_provider_error")
    ]
    assert balance(client, key) == 2000


def test_admin_sync_applies_a_payment_whose_webhook_was_lost(
    client: Any, buyer: tuple[str, str], stripe_on: None, sim: Any
) -> None:
    key, _ = buyer
    purchase = topup(client, key, 1000)
    customer(sim, purchase)  # paid at Stripe; the event never reaches us

    pending = client.get("/v1/admin/purchases?status=pending", headers=ADMIN).get_json()["data"]
    synced = client.post(f"/v1/admin/purchases/{purchase['id']}/sync", headers=ADMIN)
    again = client.post(f"/v1/admin/purchases/{purchase['id']}/sync", headers=ADMIN)

    assert [p["id"] for p in pending] == [purchase["id"]]
    assert synced.get_json()["outcome"] == "granted"
    assert again.get_json()["outcome"] == "already_paid"
    assert balance(client, key) == 3000
    assert_audit_clean()


def test_admin_sync_asks_stripe_outside_the_database_transaction(
    client: Any, buyer: tuple[str, str], stripe_on: None, sim: Any, monkeypatch: Any
) -> None:
    """The Stripe call can take seconds (or its whole timeout when Stripe is slow): the
    request must not hold SQLite's one writer lock through it, or every settle, submission
    and grant in every process waits on it (DESIGN: no lock across a network call)."""
    key, account_id = buyer
    purchase = topup(client, key, 1000)
    customer(sim, purchase)
    wrote = threading.Event()

    def write_elsewhere() -> None:
        with transaction() as session:
            session.execute(update(Account).where(Account.id == account_id).values(timezone="UTC"))
        wrote.set()

    real_retrieve = admin_api.retrieve_checkout

    def retrieve_while_another_writes(session_id: str) -> dict[str, Any]:
        writer = threading.Thread(target=write_elsewhere, daemon=True)
        writer.start()
        wrote.wait(timeout=3)
        return real_retrieve(session_id)

    monkeypatch.setattr(admin_api, "retrieve_checkout", retrieve_while_another_writes)
    synced = client.post(f"/v1/admin/purchases/{purchase['id']}/sync", headers=ADMIN)

    assert synced.get_json()["outcome"] == "granted"
    assert wrote.is_set()
    assert balance(client, key) == 3000


def test_cancelling_a_pending_purchase_expires_its_checkout(
    client: Any, buyer: tuple[str, str], stripe_on: None, sim: Any
) -> None:
    key, _ = buyer
    purchase = topup(client, key, 1000)

    cancelled = client.post(f"/v1/billing/payments/{purchase['id']}/cancel", headers=auth(key))
    session_id = purchase["checkout_url"].rsplit("/", 1)[-1]
    at_stripe = httpx.get(f"{sim.url}/stripe/v1/checkout/sessions/{session_id}").json()
    admin_fail = client.post(
        f"/v1/admin/purchases/{purchase['id']}/fail", json={"reason": "bounced"}, headers=ADMIN
    )

    assert cancelled.get_json()["purchase"]["status"] == "failed"
    assert at_stripe["status"] == "expired"
    assert admin_fail.get_json()["purchase"]["failure_reason"] == "cancelled"
    assert confirm(client, purchase["id"]).status_code == 409
    assert balance(client, key) == 2000


@pytest.mark.parametrize("who", ["buyer", "admin"])
def test_a_cancel_after_the_customer_paid_at_stripe_applies_the_payment(
    client: Any, buyer: tuple[str, str], stripe_on: None, sim: Any, who: str
) -> None:
    """Paid at Checkout, the event not delivered yet: giving the purchase up would keep
    the money and grant nothing. The cancel asks Stripe first, finds the checkout
    completed, grants it and answers 409."""
    key, _ = buyer
    purchase = topup(client, key, 1000)
    customer(sim, purchase)  # paid at Stripe; its event is still on the way

    if who == "buyer":
        refused = client.post(f"/v1/billing/payments/{purchase['id']}/cancel", headers=auth(key))
    else:
        refused = client.post(
            f"/v1/admin/purchases/{purchase['id']}/fail", json={"reason": "gone"}, headers=ADMIN
        )

    assert refused.status_code == 409, refused.get_json()
    assert refused.get_json()["error"]["outcome"] == "granted"
    seen = client.get(f"/v1/billing/payments/{purchase['id']}", headers=auth(key)).get_json()
    assert seen["purchase"]["status"] == "paid"
    assert balance(client, key) == 3000
    assert_audit_clean()


def test_a_payment_for_a_purchase_given_up_is_put_on_the_accounts_record(
    client: Any, buyer: tuple[str, str], stripe_on: None, sim: Any
) -> None:
    """Stripe took money for a purchase we had failed: nothing is granted, and the
    account's record says to refund it (not only a log line)."""
    key, account_id = buyer
    purchase = topup(client, key, 1000)
    signed = customer(sim, purchase)
    with transaction() as session:
        purchases.fail(session, purchase["id"], "cancelled", utcnow())

    assert deliver(client, signed).get_json()["outcome"] == "not_pending"

    assert balance(client, key) == 2000
    with transaction() as session:
        event = session.scalar(
            select(AccountEvent).where(
                AccountEvent.account_id == account_id, AccountEvent.type == "payment_not_granted"
            )
        )
        assert event is not None
        assert event.data["purchase_id"] == purchase["id"]
        assert event.data["action"] == "refund"
        assert event.data["payment_reference"].startswith("pi_")


@pytest.mark.parametrize(
    ("field", "paid"), [("amount_total", 5), ("currency", "eur")], ids=["amount", "currency"]
)
def test_a_payment_of_another_amount_grants_nothing_and_is_put_on_the_record_once(
    client: Any, buyer: tuple[str, str], stripe_on: None, sim: Any, field: str, paid: Any
) -> None:
    """Stripe took another amount (or currency) than the purchase's: nothing is granted,
    and the account's record says so (a log line alone got lost), once however often
    Stripe resends the event."""
    key, account_id = buyer
    purchase = topup(client, key, 1000)
    event = json.loads(customer(sim, purchase)["payload"])
    event["data"]["object"][field] = paid
    payload = json.dumps(event)
    signed = {"payload": payload, "signature": sign(payload, WEBHOOK_SECRET, int(time.time()))}

    answers = [deliver(client, signed), deliver(client, signed)]  # and a redelivery

    assert [(a.status_code, a.get_json()["outcome"]) for a in answers] == [
        (200, "amount_mismatch")
    ] * 2
    assert balance(client, key) == 2000
    seen = client.get(f"/v1/billing/payments/{purchase['id']}", headers=auth(key)).get_json()
    assert seen["purchase"]["status"] == "pending"
    records = refund_records(account_id)
    assert len(records) == 1, records
    record = records[0]
    assert (record["purchase_id"], record["amount"], record["action"]) == (
        purchase["id"], "5.00", "check",
    )  # fmt: skip
    assert record["payment_reference"] == event["data"]["object"]["payment_intent"]
    assert (record["paid_amount_total"], record["paid_currency"]) == (
        ("5", "usd") if field == "amount_total" else ("500", "eur")
    )
    assert_audit_clean()


def test_a_card_payment_whose_reference_paid_another_purchase_is_put_on_the_record_once(
    client: Any, buyer: tuple[str, str], stripe_on: None, sim: Any
) -> None:
    """An admin confirmed another purchase with this card payment's reference: one
    payment pays for one purchase, so the card event grants nothing, and the record says
    to check it, once however often Stripe resends the event."""
    key, account_id = buyer
    by_card, other = topup(client, key, 1000), topup(client, key, 2000)
    signed = customer(sim, by_card)
    payment = json.loads(signed["payload"])["data"]["object"]["payment_intent"]
    assert confirm(client, other["id"], payment).get_json()["granted"] is True

    answers = [deliver(client, signed), deliver(client, signed)]

    assert [(a.status_code, a.get_json()["outcome"]) for a in answers] == [
        (200, "duplicate_payment")
    ] * 2
    assert balance(client, key) == 2000 + 2000
    seen = client.get(f"/v1/billing/payments/{by_card['id']}", headers=auth(key)).get_json()
    assert seen["purchase"]["status"] == "pending"
    records = refund_records(account_id)
    assert [(r["purchase_id"], r["payment_reference"], r["action"]) for r in records] == [
        (by_card["id"], payment, "check")
    ]
    assert_audit_clean()


def test_billing_history_pages_purchases_and_bank_transfers(client: Any) -> None:
    key, account = register(client)
    path = f"/v1/admin/accounts/{account['id']}"
    client.patch(path, json={"plan": "growth"}, headers=ADMIN)
    transfer = {"payment_reference": "BT-1", "amount": "149.00", "payer_name": "Jo Doe"}
    assert client.post(f"{path}/bank-transfer", json=transfer, headers=ADMIN).status_code == 200
    bought = [topup(client, key, 1000 * n)["id"] for n in (1, 2, 3)]
    confirm(client, bought[0])

    first = client.get("/v1/billing/payments?limit=2", headers=auth(key)).get_json()
    rest = client.get(
        f"/v1/billing/payments?limit=2&cursor={first['next_cursor']}", headers=auth(key)
    ).get_json()
    rows = first["data"] + rest["data"]

    assert rest["next_cursor"] is None
    assert [r["id"] for r in rows[:3]] == bought[::-1]
    assert [(r["kind"], r["status"]) for r in rows] == [
        ("credits", "pending"),
        ("credits", "pending"),
        ("credits", "paid"),
        ("subscription", "paid"),
    ]
    bank = rows[-1]
    assert (bank["method"], bank["payment_reference"], bank["amount"]) == (
        "bank_transfer",
        "BT-1",
        "149.00",
    )
    assert (bank["plan"], bank["credits"], bank["confirmed_at"] is not None) == (
        "growth",
        40000,
        True,
    )
    assert client.get("/v1/account", headers=auth(key)).get_json()["payment_method"] == "manual"
    assert_audit_clean()


def test_one_bank_payment_pays_for_one_purchase_however_it_is_confirmed(
    client: Any, buyer: tuple[str, str]
) -> None:
    """A reference typed in twice (another purchase, a bank transfer, another account)
    is a 409 that grants nothing; confirming the same purchase again is still a replay."""
    key, _ = buyer
    first, second = topup(client, key), topup(client, key)
    other_key, other = register(client, "other@example.com")
    client.patch(f"/v1/admin/accounts/{other['id']}", json={"plan": "growth"}, headers=ADMIN)
    paid = balance(client, key) + 1000

    assert confirm(client, first["id"], "BANK-77").status_code == 200
    assert confirm(client, first["id"], "BANK-77").get_json()["granted"] is False
    again = confirm(client, second["id"], "\tBANK-77 ")  # the same, with stray blanks
    transfer = client.post(
        f"/v1/admin/accounts/{other['id']}/bank-transfer",
        json={"payment_reference": "BANK-77", "amount": "149.00", "payer_name": "Jo Doe"},
        headers=ADMIN,
    )

    for refused in (again, transfer):
        assert refused.status_code == 409, refused.get_json()
        error = refused.get_json()["error"]
        assert (error["code"], error["reference"]) == ("duplicate_reference", "BANK-77")
        assert first["id"] in error["message"]
    assert (balance(client, key), balance(client, other_key)) == (paid, 2000)
    with transaction() as session:
        assert session.get(Purchase, second["id"]).status == "pending"
    # A transfer confirmed first blocks the purchase the same way.
    assert (
        client.post(
            f"/v1/admin/accounts/{other['id']}/bank-transfer",
            json={"payment_reference": "BANK-78", "amount": "149.00", "payer_name": "Jo Doe"},
            headers=ADMIN,
        ).status_code
        == 200
    )
    assert confirm(client, second["id"], "BANK-78").status_code == 409
    assert confirm(client, second["id"], "BANK-79").status_code == 200
    assert balance(client, key) == paid + 1000
    assert_audit_clean()


def test_a_payment_racing_past_the_check_is_refused_by_the_index(
    client: Any, buyer: tuple[str, str], db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two confirmations with one reference at once both pass the check (neither sees
    the other's uncommitted row): the unique index refuses the second, which leaves
    nothing behind."""
    from billing import credits
    from billing.errors import DuplicateReference

    key, _ = buyer
    first, second = topup(client, key), topup(client, key)
    assert confirm(client, first["id"], "BANK-RACE").status_code == 200
    before = balance(client, key)
    monkeypatch.setattr(credits, "_paid_by", lambda *_: None)  # the racer's view
    with transaction(db_url) as session:
        with pytest.raises(DuplicateReference):
            purchases.confirm(session, second["id"], "manual", "BANK-RACE", utcnow())
        assert session.get(Purchase, second["id"]).status == "pending"
    assert balance(client, key) == before
    assert_audit_clean()


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("purchases/{purchase}/confirm", {"payment_reference": " \u3000"}),
        ("purchases/{purchase}/fail", {"reason": "\n"}),
        ("accounts/{account}/credits", {"amount": 5, "reason": "  "}),
        (
            "accounts/{account}/bank-transfer",
            {"payment_reference": "BT-1", "amount": "149.00", "payer_name": " "},
        ),
        (
            "accounts/{account}/bank-transfer",
            {
                "payment_reference": "BT-1",
                "amount": "1",
                "payer_name": "Jo",
                "override_reason": " ",
            },
        ),
    ],
)
def test_blank_admin_text_is_422_and_changes_nothing(
    client: Any, buyer: tuple[str, str], path: str, body: dict[str, Any]
) -> None:
    key, account_id = buyer
    purchase = topup(client, key)
    before = balance(client, key)

    answer = client.post(
        "/v1/admin/" + path.format(purchase=purchase["id"], account=account_id),
        json=body,
        headers=ADMIN,
    )

    assert answer.status_code == 422, answer.get_json()
    assert balance(client, key) == before
    with transaction() as session:
        assert session.get(Purchase, purchase["id"]).status == "pending"
