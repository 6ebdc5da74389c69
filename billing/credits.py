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
from billing.accounts import get_account
from billing.errors import Forbidden, InvalidInput
from billing.periods import add_months
from models import Account, CreditTransaction


@dataclass(frozen=True)
class BankTransfer:
    payment_reference: str
    amount: Decimal
    payer_name: str
    proof_url: str | None = None
    period_months: int = 1


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
    """Activate the account for the paid period and grant the plan's monthly credits."""
    account = get_account(session, account_id)
    plan = account.plan
    if plan is None:
        raise InvalidInput("The account has no plan to pay for; set its plan first.")
    if not 1 <= transfer.period_months <= 24:
        raise InvalidInput("period_months must be 1 to 24.", fields={"period_months": "1-24"})
    txn = ledger.grant(
        session,
        account.id,
        plan.included_credits,
        "bank_transfer",
        f"Bank transfer {transfer.payment_reference} confirmed: {plan.name} plan",
        reference=transfer.payment_reference,
        metadata={
            "payment_reference": transfer.payment_reference,
            "amount": str(transfer.amount),
            "payer_name": transfer.payer_name,
            "proof_url": transfer.proof_url,
            "period_months": transfer.period_months,
        },
    )
    account.status = "active"
    account.period_start = now
    account.period_end = add_months(now, transfer.period_months)
    session.flush()
    return txn
