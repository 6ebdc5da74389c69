"""Purchases: credits and plan months are bought, never typed in.

A purchase is written `pending` with the amount we priced (the client only says how many
credits, or which plan); nothing is granted until a payment confirms it, by an admin
(manual or bank payment) or by a verified Stripe event. Confirming is one conditional
UPDATE `pending -> paid` and the grant keyed on the purchase id, in the same transaction:
a second confirmation, from either path, finds the purchase paid and grants nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from billing import ledger
from billing.accounts import has_event, record_event
from billing.credits import PlanPayment, paying_once, start_paid_period
from billing.errors import (
    DuplicateReference,
    Forbidden,
    InvalidInput,
    NotFound,
    PurchaseNotPending,
)
from billing.limits import lock_account, require_paid_plan
from billing.paging import Page, newest_first, page_of, page_size, time_cursor
from models import PURCHASE_STATUSES, Account, CreditTransaction, Plan, Purchase, as_utc

log = logging.getLogger(__name__)

CURRENCY = "usd"
CENT = Decimal("0.01")
# Below this, card fees eat the payment (Stripe refuses charges under $0.50).
MIN_AMOUNT = Decimal("1.00")
# The fewest credits a top-up buys, on every plan (so a client can know it up front; at
# any plan's price they cost more than MIN_AMOUNT, which is checked as well).
MIN_TOPUP_CREDITS = 500


@dataclass(frozen=True)
class Confirmation:
    purchase: Purchase
    granted: bool  # False: it was paid already (a replay or a second path); nothing moved


def price_of_credits(plan: Plan, credits: int) -> Decimal:
    """What `credits` cost on `plan` (its `extra_credit_price`), to the cent."""
    if plan.extra_credit_price is None:
        raise Forbidden(
            f"Credit top-ups have no price on the {plan.name} plan yet; contact support.",
            reason="topup_not_priced",
        )
    return (plan.extra_credit_price * credits).quantize(CENT, rounding=ROUND_HALF_UP)


def create_topup(session: Session, account: Account, credits: int) -> Purchase:
    """A pending purchase of `credits`, priced from the account's plan (a paid one)."""
    require_paid_plan(account, "buying credits")
    plan = account.plan
    if plan is None or not plan.allow_credit_topup:
        plan_name = plan.name if plan else "your"
        raise Forbidden(
            f"Credit top-ups are not available on the {plan_name} plan. Upgrade to buy credits.",
            reason="topup_not_allowed",
        )
    if credits < MIN_TOPUP_CREDITS:
        raise InvalidInput(
            f"A top-up buys at least {MIN_TOPUP_CREDITS:,} credits.",
            fields={"credits": f"at least {MIN_TOPUP_CREDITS}"},
        )
    amount = price_of_credits(plan, credits)
    if amount < MIN_AMOUNT:
        assert plan.extra_credit_price is not None
        least = int((MIN_AMOUNT / plan.extra_credit_price).to_integral_value(ROUND_CEILING))
        raise InvalidInput(
            f"A top-up must cost at least ${MIN_AMOUNT}: buy at least {least:,} credits on the "
            f"{plan.name} plan.",
            fields={"credits": f"at least {least}"},
        )
    return _pending(session, account.id, "credits", credits, amount, None, 1)


def create_subscription(
    session: Session, account: Account, plan: Plan, months: int = 1
) -> Purchase:
    """A pending payment for `months` of `plan` (paid signup, upgrade, a lapsed prepaid)."""
    if plan.included_credits <= 0:
        raise InvalidInput(f"The {plan.name} plan includes no credits to pay for.")
    return _pending(
        session,
        account.id,
        "subscription",
        plan.included_credits * months,
        (plan.price * months).quantize(CENT),
        plan.id,
        months,
    )


def supersede_plan_purchases(
    session: Session, account_id: str, now: datetime, keep: str | None = None
) -> tuple[str, ...]:
    """Fail the account's pending plan purchases but `keep` (`superseded`); the Stripe
    checkouts they had, to close once this commits."""
    conditions = [Purchase.account_id == account_id, Purchase.kind == "subscription"]
    if keep is not None:
        conditions.append(Purchase.id != keep)
    return _fail_pending(session, conditions, "superseded", now)


def withdraw_retired_plan(session: Session, plan: Plan, now: datetime) -> tuple[str, ...]:
    """A retired plan is no longer sold: its purchases still waiting for a payment fail
    (`plan_retired`), else a customer could pay for a plan that then refuses every job
    (402); the Stripe checkouts they had, to close once this commits. A payment arriving
    anyway is recorded for a refund, as for any failed purchase."""
    if plan.is_active:
        return ()
    return _fail_pending(session, [Purchase.plan_id == plan.id], "plan_retired", now)


def _fail_pending(
    session: Session, conditions: list[Any], reason: str, now: datetime
) -> tuple[str, ...]:
    checkouts = session.scalars(
        update(Purchase)
        .where(Purchase.status == "pending", *conditions)
        .values(status="failed", failure_reason=reason, failed_at=now)
        .returning(Purchase.stripe_session_id)
        .execution_options(synchronize_session=False)
    ).all()
    return tuple(checkout for checkout in checkouts if checkout)


def _pending(
    session: Session,
    account_id: str,
    kind: str,
    credits: int,
    amount: Decimal,
    plan_id: int | None,
    months: int,
) -> Purchase:
    purchase = Purchase(
        account_id=account_id,
        kind=kind,
        status="pending",
        credits=credits,
        amount=amount,
        currency=CURRENCY,
        plan_id=plan_id,
        period_months=months,
    )
    session.add(purchase)
    session.flush()
    return purchase


def get_purchase(session: Session, purchase_id: str, account_id: str | None = None) -> Purchase:
    """One purchase; with `account_id`, only that account's (another's is not found)."""
    purchase = session.get(Purchase, purchase_id, populate_existing=True)
    if purchase is None or (account_id is not None and purchase.account_id != account_id):
        raise NotFound(f"Purchase {purchase_id!r} not found.")
    return purchase


def attach_checkout(session: Session, purchase_id: str, session_id: str, url: str | None) -> None:
    """Remember the Stripe Checkout Session that collects this purchase's payment."""
    session.execute(
        update(Purchase)
        .where(Purchase.id == purchase_id, Purchase.status == "pending")
        .values(stripe_session_id=session_id, checkout_url=url, method="stripe")
        .execution_options(synchronize_session=False)
    )


def confirm(
    session: Session, purchase_id: str, method: str, reference: str, now: datetime
) -> Confirmation:
    """Mark the purchase paid and grant what it bought, exactly once.

    The conditional UPDATE is the gate: of two confirmations racing (admin and webhook,
    or a replay), one moves the row and grants; the other finds it paid and does nothing.
    Confirming a failed purchase is refused: its payment never completed.

    The account is locked before the purchase row, the order a plan change takes (it
    locks the account, then fails its pending plan purchases): the other order deadlocked.
    """
    account_id = session.scalar(select(Purchase.account_id).where(Purchase.id == purchase_id))
    if account_id is not None:
        lock_account(session, account_id)
    with paying_once(session, reference, purchase_id):
        moved = session.execute(
            update(Purchase)
            .where(Purchase.id == purchase_id, Purchase.status == "pending")
            .values(status="paid", method=method, payment_reference=reference, confirmed_at=now)
            .execution_options(synchronize_session=False)
        ).rowcount  # type: ignore[attr-defined]
    purchase = get_purchase(session, purchase_id)
    if not moved:
        if purchase.status == "paid":
            return Confirmation(purchase, granted=False)
        raise PurchaseNotPending(
            f"Purchase {purchase_id} is {purchase.status}"
            f"{f' ({purchase.failure_reason})' if purchase.failure_reason else ''}; "
            "nothing was granted. Ask the customer to buy again.",
            status=purchase.status,
        )
    purchase.transaction_id = _grant(session, purchase, method, reference, now).id
    session.flush()
    return Confirmation(purchase, granted=True)


def _grant(
    session: Session, purchase: Purchase, method: str, reference: str, now: datetime
) -> CreditTransaction:
    details = {"purchase_id": purchase.id, "amount": str(purchase.amount), "method": method}
    if purchase.kind == "credits":
        session.execute(
            update(Account)
            .where(Account.id == purchase.account_id)
            .values(payment_method=method)
            .execution_options(synchronize_session=False)
        )
        return ledger.grant(
            session,
            purchase.account_id,
            purchase.credits,
            "topup",
            f"Top-up of {purchase.credits:,} credits (purchase {purchase.id})",
            reference=purchase.id,
            metadata={**details, "payment_reference": reference},
        )
    account = session.get(Account, purchase.account_id, populate_existing=True)
    assert account is not None
    assert purchase.plan is not None
    return start_paid_period(
        session,
        account,
        PlanPayment(
            plan=purchase.plan,
            months=purchase.period_months,
            type_="subscription",
            reference=purchase.id,
            method=method,
            description=f"{purchase.plan.name} plan paid ({method}): purchase {purchase.id}",
            metadata={**details, "payment_reference": reference},
            credits=purchase.credits,
        ),
        now,
    )


def fail(session: Session, purchase_id: str, reason: str, now: datetime) -> Purchase:
    """`pending -> failed` (expired, declined, cancelled): nothing is granted, ever."""
    session.execute(
        update(Purchase)
        .where(Purchase.id == purchase_id, Purchase.status == "pending")
        .values(status="failed", failure_reason=reason[:200], failed_at=now)
        .execution_options(synchronize_session=False)
    )
    return get_purchase(session, purchase_id)


def cancel(
    session: Session, purchase_id: str, now: datetime, reason: str = "cancelled"
) -> Purchase:
    """Give up a pending purchase (the buyer, or an admin whose payment will not come);
    a failed one stays as it is, a paid one is a conflict."""
    purchase = fail(session, purchase_id, reason, now)
    if purchase.status == "paid":
        raise PurchaseNotPending(f"Purchase {purchase_id} is paid already.", status="paid")
    return purchase


def apply_stripe_event(session: Session, event: dict[str, Any], now: datetime) -> str:
    """Act on a verified Stripe event about a Checkout Session; returns what happened.

    `checkout.session.completed` (paid) and `...async_payment_succeeded` confirm;
    `...expired` and `...async_payment_failed` fail. The session must be the one we
    created for the purchase, for the amount and currency we priced: an unknown session
    is logged and changes nothing; a payment of another amount or currency grants
    nothing and goes on the account's record (`payment_not_granted`), as does one that
    lands on a failed purchase, one already paid another way, or a payment that paid
    another purchase.
    """
    kind = str(event.get("type", ""))
    data = event.get("data")
    checkout = data.get("object") if isinstance(data, dict) else None
    if not kind.startswith("checkout.session.") or not isinstance(checkout, dict):
        return "ignored"
    purchase = session.scalar(
        select(Purchase).where(Purchase.stripe_session_id == str(checkout.get("id")))
    )
    if purchase is None or checkout.get("client_reference_id") != purchase.id:
        log.warning("stripe event %s for an unknown checkout session", event.get("id"))
        return "unknown_session"
    if kind in ("checkout.session.expired", "checkout.session.async_payment_failed"):
        fail(session, purchase.id, kind.rsplit(".", 1)[-1], now)
        return "failed"
    # Whatever the event type says, the session itself must say it was paid.
    paid = kind in (
        "checkout.session.completed",
        "checkout.session.async_payment_succeeded",
    ) and (checkout.get("payment_status") == "paid")
    if not paid:
        return "awaiting_payment"
    reference = str(checkout.get("payment_intent") or checkout.get("id"))
    if checkout.get("amount_total") != minor_units(purchase.amount) or (
        str(checkout.get("currency", "")).lower() != purchase.currency
    ):
        log.error(
            "stripe session %s paid %s %s for purchase %s priced %s %s: not granted",
            checkout.get("id"), checkout.get("amount_total"), checkout.get("currency"),
            purchase.id, purchase.amount, purchase.currency,
        )  # fmt: skip
        _not_granted(
            session, purchase, reference, "check",
            paid_amount_total=str(checkout.get("amount_total")),
            paid_currency=str(checkout.get("currency")),
        )  # fmt: skip
        return "amount_mismatch"
    try:
        confirmation = confirm(session, purchase.id, "stripe", reference, now)
    except PurchaseNotPending:
        log.error("stripe says purchase %s was paid, but it is failed: refund it", purchase.id)
        _not_granted(session, purchase, reference, "refund")
        return "not_pending"
    except DuplicateReference:
        log.error("stripe payment %s paid another purchase: %s not granted", reference, purchase.id)
        _not_granted(session, purchase, reference, "check")
        return "duplicate_payment"
    if not confirmation.granted and confirmation.purchase.payment_reference != reference:
        # Paid another way first (an admin confirmed a transfer): Stripe's money is extra.
        log.warning(
            "purchase %s paid twice (%s, then stripe %s): refund one",
            purchase.id, confirmation.purchase.payment_reference, reference,
        )  # fmt: skip
        _not_granted(session, purchase, reference, "refund")
    return "granted" if confirmation.granted else "already_paid"


def _not_granted(
    session: Session, purchase: Purchase, reference: str, action: str, **details: str
) -> None:
    """A payment Stripe took that grants nothing, on the account's record, where an admin
    looks (a log line alone got lost); once per payment, however often Stripe resends
    its event. `details`: what Stripe says was paid, when it is not what we priced."""
    if has_event(
        session, purchase.account_id, "payment_not_granted",
        purchase_id=purchase.id, payment_reference=reference,
    ):  # fmt: skip
        return
    record_event(
        session,
        purchase.account_id,
        "payment_not_granted",
        purchase_id=purchase.id,
        payment_reference=reference,
        amount=str(purchase.amount),
        action=action,
        **details,
    )


def event_for(checkout: dict[str, Any]) -> dict[str, Any]:
    """The event a Checkout Session's current state amounts to (for reconciling)."""
    kind = "checkout.session.completed"
    if checkout.get("status") == "expired":
        kind = "checkout.session.expired"
    return {"id": f"sync:{checkout.get('id')}", "type": kind, "data": {"object": checkout}}


def minor_units(amount: Decimal) -> int:
    """USD in cents, as Stripe counts amounts."""
    return int((amount * 100).to_integral_value(ROUND_HALF_UP))


def list_purchases(
    session: Session,
    account_id: str | None,
    *,
    status: str | None = None,
    cursor: str | None = None,
    limit: int = 20,
) -> Page[Purchase]:
    """Newest first: one account's billing history, or (admin) every account's."""
    if status is not None and status not in PURCHASE_STATUSES:
        raise InvalidInput(
            f"Unknown status {status!r}. Choose one of: {', '.join(PURCHASE_STATUSES)}.",
            fields={"status": f"one of {', '.join(PURCHASE_STATUSES)}"},
        )
    limit = page_size(limit)
    query = select(Purchase)
    if account_id is not None:
        query = query.where(Purchase.account_id == account_id)
    if status is not None:
        query = query.where(Purchase.status == status)
    rows = session.scalars(newest_first(query, Purchase, cursor, limit)).all()
    return page_of(rows, limit, time_cursor)


def purchase_view(purchase: Purchase) -> dict[str, Any]:
    """The public shape: what was bought, for how much, and how it was paid."""
    return {
        "id": purchase.id,
        "account_id": purchase.account_id,
        "kind": purchase.kind,
        "status": purchase.status,
        "credits": purchase.credits,
        "amount": str(purchase.amount),
        "currency": purchase.currency,
        "plan": purchase.plan.slug if purchase.plan else None,
        "period_months": purchase.period_months if purchase.kind == "subscription" else None,
        "method": purchase.method,
        "payment_reference": purchase.payment_reference,
        "checkout_url": purchase.checkout_url if purchase.status == "pending" else None,
        "failure_reason": purchase.failure_reason,
        "created_at": as_utc(purchase.created_at).isoformat(),
        "confirmed_at": _iso(purchase.confirmed_at),
        "failed_at": _iso(purchase.failed_at),
    }


def _iso(value: datetime | None) -> str | None:
    return as_utc(value).isoformat() if value else None
