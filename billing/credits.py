"""Paid periods: what a confirmed plan payment (a bank transfer, or a paid subscription
purchase) does to an account, and the plan's credits an admin activation grants.

Every grant goes through `ledger.grant` with a once-only reference, so the same payment
(or the same period) can never be credited twice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from billing import ledger
from billing.accounts import get_account, held_by_admin, move_status
from billing.errors import AmountMismatch, DuplicateReference, IdempotencyConflict, InvalidInput
from billing.lifecycle import RunReport, ask_if_prepaid_ended, grant_period, roll_over_account
from billing.limits import lock_account
from billing.periods import add_months
from billing.plans import is_renewable
from billing.submission import check_idempotency_key
from models import Account, CreditTransaction, Plan, Purchase, as_utc


@dataclass(frozen=True)
class BankTransfer:
    payment_reference: str
    amount: Decimal
    payer_name: str
    proof_url: str | None = None
    period_months: int = 1
    # An admin's explicit reason to accept an amount that is not price x months.
    override_reason: str | None = None


@dataclass(frozen=True)
class PlanPayment:
    """A confirmed payment for `months` of `plan`: how its grant is written."""

    plan: Plan
    months: int
    type_: str
    reference: str
    method: str
    description: str
    metadata: dict[str, Any] = field(default_factory=dict)
    # What a purchase priced and sold (its snapshot); None: the plan's credits x months now.
    credits: int | None = None


def _check_payable(plan: Plan, months: int) -> None:
    if not 1 <= months <= 24:
        raise InvalidInput("period_months must be 1 to 24.", fields={"period_months": "1-24"})
    if plan.included_credits <= 0:
        raise InvalidInput(f"The {plan.name} plan includes no credits to pay for.")


def start_paid_period(
    session: Session, account: Account, payment: PlanPayment, now: datetime
) -> CreditTransaction:
    """Grant `months` of the plan's credits at once (a purchase: the credits it sold, not
    what the plan includes by the time it is paid), switch to the plan, and activate.

    The months' credits are posted in one grant keyed on the payment's reference, so a
    payment is credited exactly once and a 3-month payment never yields 1 month of
    credits. Usage periods stay monthly (the Ahrefs count resets each month); renewal
    skips the periods that start before `paid_until`, and the rollover that reaches it
    moves the account to `pending_payment` (billing/lifecycle.py). A payment for the plan
    the account is active on, while it is still prepaid, extends `paid_until` and leaves
    the period alone; anything else starts a new period now. A payment for a plan also
    cancels a downgrade that was waiting for the period end.
    """
    plan, months = payment.plan, payment.months
    if payment.credits is None:
        _check_payable(plan, months)
    credits = plan.included_credits * months if payment.credits is None else payment.credits
    # Decide on the account as it is under its row lock: the rollover may have asked for
    # a payment since the caller read it (extending from that read would leave this paid
    # account `pending_payment`); the rollover then waits for this payment's commit.
    lock_account(session, account.id)
    session.refresh(account)
    prepaid_until = as_utc(account.paid_until) if account.paid_until else None
    extending = (
        account.status == "active"
        and account.plan_id == plan.id
        and prepaid_until is not None
        and prepaid_until > now
    )
    paid_until = add_months(prepaid_until if extending and prepaid_until else now, months)
    txn = ledger.grant(
        session,
        account.id,
        credits,
        payment.type_,
        payment.description,
        reference=payment.reference,
        metadata={
            **payment.metadata,
            "plan": plan.slug,
            "period_months": months,
            "credits_per_month": credits // months,
            "paid_until": paid_until.isoformat(),
        },
    )
    account.plan = plan
    account.scheduled_plan = None
    account.paid_until = paid_until
    account.payment_method = payment.method
    if not extending:
        # A payment never lifts an admin's suspension or a cancellation: it is granted,
        # and the status stays the admin's call (an expired trial's is lifted).
        status = session.scalar(select(Account.status).where(Account.id == account.id))
        if not held_by_admin(session, account.id, status) and move_status(
            session,
            account.id,
            "active",
            payment.type_,
            expected=status,
            plan=plan.slug,
            reference=payment.reference,
        ):
            session.refresh(account, ["status"])
        account.period_start = now
        account.period_end = add_months(now, 1)
        account.usage_ahrefs_queries = 0
    session.flush()
    return txn


@contextmanager
def paying_once(session: Session, reference: str, purchase_id: str | None = None) -> Iterator[None]:
    """Mark a purchase paid by the payment `reference` inside this block: one payment
    pays for one purchase, however it is confirmed (a bank transfer, an admin confirming
    a purchase, Stripe), or one bank payment typed in twice would be credited twice. A
    reference already used (by another purchase than `purchase_id`) is refused before
    anything is written; of two racing, the unique index decides
    (`uq_purchases_paid_reference`) and the loser leaves nothing behind."""
    used = _paid_by(session, reference, purchase_id)
    if used is not None:
        raise _used(reference, used)
    try:
        with session.begin_nested():
            yield
            session.flush()
    except IntegrityError as exc:
        if "payment_reference" not in str(exc.orig):
            raise
        raise _used(reference, None) from None


def _paid_by(session: Session, reference: str, purchase_id: str | None) -> str | None:
    """The purchase (other than `purchase_id`) this payment already paid for."""
    return session.scalar(
        select(Purchase.id).where(
            Purchase.payment_reference == reference,
            Purchase.status == "paid",
            Purchase.id != (purchase_id or ""),
        )
    )


def _used(reference: str, purchase_id: str | None) -> DuplicateReference:
    by = f" (purchase {purchase_id})" if purchase_id else ""
    return DuplicateReference(
        f"Payment {reference!r} already paid for a purchase{by}; nothing was granted. "
        "One payment pays for one purchase: check the reference.",
        reference=reference,
        purchase_id=purchase_id,
    )


def confirm_bank_transfer(
    session: Session, account_id: str, transfer: BankTransfer, now: datetime
) -> CreditTransaction:
    """A bank transfer for the account's plan: the months it pays for, recorded as a paid
    purchase (billing history) and granted under the transfer's reference.

    The amount must be the plan's price x months (plans without a list price, such as
    enterprise at 0, always need it): anything else is refused unless the admin gives an
    `override_reason`, which the transaction's metadata keeps.
    """
    account = get_account(session, account_id)
    plan = account.plan
    if plan is None:
        raise InvalidInput("The account has no plan to pay for; set its plan first.")
    months = transfer.period_months
    _check_payable(plan, months)
    expected = (plan.price * months).quantize(Decimal("0.01"))
    if transfer.amount != expected and not transfer.override_reason:
        raise AmountMismatch(
            f"The transfer of {transfer.amount} does not match the {plan.name} plan's price "
            f"for {months} month{'s' if months > 1 else ''} ({plan.price} x {months} = "
            f"{expected}). Check the amount, or confirm it anyway with an 'override_reason'.",
            amount=str(transfer.amount),
            expected_amount=str(expected),
            difference=str(transfer.amount - expected),
        )
    with paying_once(session, transfer.payment_reference):
        return _record_bank_transfer(session, account, plan, transfer, expected, now)


def _record_bank_transfer(
    session: Session,
    account: Account,
    plan: Plan,
    transfer: BankTransfer,
    expected: Decimal,
    now: datetime,
) -> CreditTransaction:
    months = transfer.period_months
    txn = start_paid_period(
        session,
        account,
        PlanPayment(
            plan=plan,
            months=months,
            type_="bank_transfer",
            reference=transfer.payment_reference,
            method="bank_transfer",
            description=f"Bank transfer {transfer.payment_reference} confirmed: {plan.name} "
            f"plan, {months} month{'s' if months > 1 else ''}",
            metadata={
                "payment_reference": transfer.payment_reference,
                "amount": str(transfer.amount),
                "payer_name": transfer.payer_name,
                "proof_url": transfer.proof_url,
                "expected_amount": str(expected),
                "override_reason": (
                    transfer.override_reason if transfer.amount != expected else None
                ),
            },
        ),
        now,
    )
    session.add(
        Purchase(
            account_id=account.id,
            kind="subscription",
            status="paid",
            credits=txn.amount,
            amount=transfer.amount,
            plan_id=plan.id,
            period_months=months,
            method="bank_transfer",
            payment_reference=transfer.payment_reference,
            transaction_id=txn.id,
            confirmed_at=now,
        )
    )
    session.flush()
    return txn


def grant_period_credits(session: Session, account: Account, now: datetime) -> bool:
    """The plan's credits for the account's current period, once (an admin activation).

    It is the renewal's grant for that period (`lifecycle.grant_period`), so neither a
    second activation nor the renewal task can credit the same period again, and a
    period a payment prepaid is never credited on top. Nor is one past the prepaid end
    (`paid_until`) that nobody paid for: the account is asked to pay instead and ends
    `pending_payment`, where the rollover puts an account that was active at that end.
    False when the plan is not a paid one, the period was already credited or is unpaid.
    """
    plan = account.plan
    if plan is None or not is_renewable(plan) or plan.included_credits <= 0:
        return False
    if account.period_start is None or account.period_end is None:
        account.period_start, account.period_end = now, add_months(now, 1)
    elif as_utc(account.period_end) <= now:
        # Ended, not rolled over yet (hourly): the period to credit is the one now, else
        # the renewal would grant that one on top of a month already over. Its webhooks
        # (a payment due) go out with the periodic requeue.
        roll_over_account(session, account, now, RunReport())
        session.refresh(account)
    if account.status != "active" or ask_if_prepaid_ended(session, account, now, RunReport()):
        return False  # the rollover just asked for a payment, or this did
    return grant_period(session, account, plan, " (activated by an admin)")


def adjust(
    session: Session, account_id: str, amount: int, reason: str, idempotency_key: str | None
) -> bool:
    """An admin's adjustment (credits in, or back out). With an `Idempotency-Key` it is
    posted once: a retry of the same adjustment (a timeout after the commit) is answered,
    not posted again, and the key with another amount or reason is a conflict. True when
    this call posted it."""
    if amount == 0:
        raise InvalidInput("amount must not be 0.", fields={"amount": "non-zero integer"})
    if idempotency_key is None:
        ledger.grant(session, account_id, amount, "adjustment", reason)
        return True
    check_idempotency_key(idempotency_key)
    # Hashed: a key may be 255 characters, the reference column holds 200.
    reference = "idempotency:" + hashlib.sha256(idempotency_key.encode()).hexdigest()
    if _same_adjustment(session, account_id, reference, amount, reason):
        return False
    try:
        with session.begin_nested():
            ledger.grant(session, account_id, amount, "adjustment", reason, reference=reference)
    except (IntegrityError, DuplicateReference):  # the key, committed by a racer just now
        if not _same_adjustment(session, account_id, reference, amount, reason):
            raise
        return False
    return True


def _same_adjustment(
    session: Session, account_id: str, reference: str, amount: int, reason: str
) -> bool:
    """Whether the adjustment under `reference` was posted; a different one is a conflict."""
    earlier = session.execute(
        select(CreditTransaction.amount, CreditTransaction.description).where(
            CreditTransaction.account_id == account_id,
            CreditTransaction.type == "adjustment",
            CreditTransaction.reference == reference,
        )
    ).one_or_none()
    if earlier is None:
        return False
    if tuple(earlier) != (amount, reason):
        raise IdempotencyConflict(
            "This Idempotency-Key was already used for a different adjustment "
            f"({earlier.amount:+,} credits: {earlier.description!r}).",
        )
    return True
