"""Credits in: top-ups where the plan allows them, and confirmed bank transfers.

Both post through `ledger.grant` with the payment reference as the once-only key, so
the same payment can never be credited twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy.orm import Session

from billing import ledger
from billing.accounts import get_account, move_status
from billing.errors import AmountMismatch, Forbidden, InvalidInput
from billing.periods import add_months
from models import Account, CreditTransaction, as_utc


@dataclass(frozen=True)
class BankTransfer:
    payment_reference: str
    amount: Decimal
    payer_name: str
    proof_url: str | None = None
    period_months: int = 1
    # An admin's explicit reason to accept an amount that is not price x months.
    override_reason: str | None = None


def topup(session: Session, account: Account, credits: int, reference: str) -> CreditTransaction:
    plan = account.plan
    if plan is None or not plan.allow_credit_topup:
        plan_name = plan.name if plan else "your"
        raise Forbidden(
            f"Credit top-ups are not available on the {plan_name} plan. Upgrade to buy credits.",
            reason="topup_not_allowed",
        )
    return ledger.grant(
        session,
        account.id,
        credits,
        "topup",
        f"Top-up of {credits:,} credits",
        reference=reference,
    )


def confirm_bank_transfer(
    session: Session, account_id: str, transfer: BankTransfer, now: datetime
) -> CreditTransaction:
    """Grant the plan's credits for every month paid, and activate the account.

    The months' credits are posted at once, in one grant keyed on the payment reference,
    so a transfer is credited exactly once and a 3-month payment never yields 1 month of
    credits. Usage periods stay monthly (the Ahrefs count resets each month); renewal
    skips the periods that start before `paid_until`, and the rollover that reaches it
    moves the account to `pending_payment` (billing/lifecycle.py). A transfer arriving
    while the account is still prepaid extends `paid_until` and leaves the period alone.
    The amount must be the plan's price x months (plans without a list price, such as
    enterprise at 0, always need it): anything else is refused unless the admin gives an
    `override_reason`, which the transaction's metadata keeps.
    """
    account = get_account(session, account_id)
    plan = account.plan
    if plan is None:
        raise InvalidInput("The account has no plan to pay for; set its plan first.")
    months = transfer.period_months
    if not 1 <= months <= 24:
        raise InvalidInput("period_months must be 1 to 24.", fields={"period_months": "1-24"})
    if plan.included_credits <= 0:
        raise InvalidInput(f"The {plan.name} plan includes no credits to pay for.")
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
    prepaid_until = as_utc(account.paid_until) if account.paid_until else None
    extending = account.status == "active" and prepaid_until is not None and prepaid_until > now
    paid_until = add_months(prepaid_until if extending and prepaid_until else now, months)
    txn = ledger.grant(
        session,
        account.id,
        plan.included_credits * months,
        "bank_transfer",
        f"Bank transfer {transfer.payment_reference} confirmed: {plan.name} plan, "
        f"{months} month{'s' if months > 1 else ''}",
        reference=transfer.payment_reference,
        metadata={
            "payment_reference": transfer.payment_reference,
            "amount": str(transfer.amount),
            "payer_name": transfer.payer_name,
            "proof_url": transfer.proof_url,
            "period_months": months,
            "expected_amount": str(expected),
            "override_reason": transfer.override_reason if transfer.amount != expected else None,
            "credits_per_month": plan.included_credits,
            "paid_until": paid_until.isoformat(),
        },
    )
    account.paid_until = paid_until
    if not extending:
        if move_status(
            session, account.id, "active", "bank_transfer",
            payment_reference=transfer.payment_reference,
        ):  # fmt: skip
            session.refresh(account, ["status"])
        account.period_start = now
        account.period_end = add_months(now, 1)
        account.usage_ahrefs_queries = 0
    session.flush()
    return txn
