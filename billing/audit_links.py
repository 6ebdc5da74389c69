"""The audit's checks of the links and shapes of money rows (see billing/audit.py).

A job's hold, deduction and usage log are on the job's account, its deduction is at most
its hold and equals its usage log; each usage log carries its job's automation run; a
paid purchase has exactly its grant; each transaction has its kind's shape. Every check
is one SQL statement that returns only the rows that break it, so the audit's memory
does not grow with the ledger.
"""

from __future__ import annotations

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session, aliased

from billing.ledger import REFERENCED_GRANTS
from models import CreditReservation, CreditTransaction, CreditUsageLog, Job, Purchase


def money_links(session: Session) -> list[str]:
    """A job's money stays with it: its hold, deduction and usage log are on the job's
    account; the deduction is at most the hold, and the usage log says what it took.
    SQL returns only the rows that break this."""
    deduction = aliased(CreditTransaction)
    rows = session.execute(
        select(
            Job.id,
            Job.account_id,
            CreditReservation.account_id,
            CreditReservation.amount,
            deduction.account_id,
            deduction.amount,
            CreditUsageLog.account_id,
            CreditUsageLog.credits,
        )
        .join(CreditReservation, CreditReservation.job_id == Job.id)
        .outerjoin(deduction, and_(deduction.job_id == Job.id, deduction.type == "deduction"))
        .outerjoin(CreditUsageLog, CreditUsageLog.job_id == Job.id)
        .where(
            or_(
                CreditReservation.account_id != Job.account_id,
                deduction.account_id != Job.account_id,
                CreditUsageLog.account_id != Job.account_id,
                deduction.amount > 0,
                -deduction.amount > CreditReservation.amount,
                CreditUsageLog.credits != -deduction.amount,
            )
        )
    )
    violations = []
    for job_id, account, hold_account, hold, paid_by, amount, logged_for, logged in rows:
        if {hold_account, paid_by or account, logged_for or account} != {account}:
            violations.append(
                f"job {job_id} of account {account}: hold on {hold_account}, deduction on "
                f"{paid_by}, usage log on {logged_for}"
            )
        if amount is not None and (amount > 0 or -amount > hold):
            violations.append(f"job {job_id}: deduction {amount} against a hold of {hold}")
        if amount is not None and logged is not None and logged != -amount:
            violations.append(f"job {job_id}: usage log of {logged} credits, deduction {amount}")
    return violations


def grants(session: Session) -> list[str]:
    """Every transaction has its kind's shape: a deduction belongs to a job, a grant adds
    credits (only an adjustment may take them back), a payment's or a period's grant has
    its reference, a top-up is a paid purchase of the account for those credits, and no
    balance was ever below 0."""
    paid = aliased(Purchase)
    rows = session.execute(
        select(
            CreditTransaction.id,
            CreditTransaction.type,
            CreditTransaction.amount,
            CreditTransaction.balance_after,
            CreditTransaction.job_id,
            CreditTransaction.reference,
            paid.id,
        )
        .outerjoin(
            paid,
            and_(
                paid.id == CreditTransaction.reference,
                paid.account_id == CreditTransaction.account_id,
                paid.status == "paid",
                paid.credits == CreditTransaction.amount,
            ),
        )
        .where(
            or_(
                CreditTransaction.balance_after < 0,
                and_(CreditTransaction.type == "deduction", CreditTransaction.job_id.is_(None)),
                and_(
                    CreditTransaction.type.not_in(("deduction", "adjustment")),
                    CreditTransaction.amount <= 0,
                ),
                and_(
                    CreditTransaction.type.in_(REFERENCED_GRANTS),
                    CreditTransaction.reference.is_(None),
                ),
                and_(CreditTransaction.type == "topup", paid.id.is_(None)),
            )
        )
    )
    violations = []
    for txn_id, type_, amount, balance_after, job_id, reference, purchase in rows:
        if balance_after < 0:
            violations.append(f"transaction {txn_id}: balance after it {balance_after} < 0")
        if type_ == "deduction" and job_id is None:
            violations.append(f"transaction {txn_id}: a deduction without a job")
        if type_ not in ("deduction", "adjustment") and amount <= 0:
            violations.append(f"transaction {txn_id}: {type_} of {amount} credits")
        if type_ in REFERENCED_GRANTS and reference is None:
            violations.append(f"transaction {txn_id}: {type_} without its reference")
        elif type_ == "topup" and purchase is None:
            violations.append(
                f"transaction {txn_id}: top-up of {amount} with no paid purchase of those "
                f"credits for it ({reference})"
            )
    return violations


def purchases(session: Session) -> list[str]:
    """A paid purchase has exactly its grant (its credits, its account); any other has
    none, and no grant names it."""
    granted = (
        select(CreditTransaction.reference, func.count().label("times"))
        .join(Purchase, Purchase.id == CreditTransaction.reference)
        .group_by(CreditTransaction.reference)
        .subquery()
    )
    times = func.coalesce(granted.c.times, 0)
    paid = Purchase.status == "paid"
    rows = session.execute(
        select(
            Purchase.id,
            Purchase.status,
            Purchase.account_id,
            Purchase.credits,
            CreditTransaction.account_id,
            CreditTransaction.amount,
            granted.c.times,
        )
        .outerjoin(CreditTransaction, CreditTransaction.id == Purchase.transaction_id)
        .outerjoin(granted, granted.c.reference == Purchase.id)
        .where(
            or_(
                and_(
                    paid,
                    or_(
                        CreditTransaction.id.is_(None),
                        CreditTransaction.account_id != Purchase.account_id,
                        CreditTransaction.amount != Purchase.credits,
                    ),
                ),
                and_(Purchase.status != "paid", or_(CreditTransaction.id.is_not(None), times > 0)),
                times > 1,
            )
        )
        .order_by(Purchase.id)
    )
    violations = []
    for purchase_id, status, account_id, credits, txn_account, txn_amount, times_ in rows:
        if status == "paid" and (txn_account, txn_amount) != (account_id, credits):
            violations.append(
                f"purchase {purchase_id}: paid, but its grant is {txn_amount} credits to "
                f"{txn_account} (want {credits} to {account_id})"
            )
        if status != "paid" and (txn_amount is not None or times_):
            violations.append(f"purchase {purchase_id}: {status}, but credits were granted")
        if (times_ or 0) > 1:
            violations.append(f"purchase {purchase_id}: granted {times_} times")
    return violations


def usage_sources(session: Session) -> list[str]:
    """Each usage log carries its job's automation run (usage splits spending by it)."""
    rows = session.execute(
        select(CreditUsageLog.job_id, CreditUsageLog.automation_id, Job.automation_id)
        .join(Job, Job.id == CreditUsageLog.job_id)
        .where(CreditUsageLog.automation_id.is_distinct_from(Job.automation_id))
    )
    return [
        f"job {job_id}: usage log automation {logged!r} != the job's {actual!r}"
        for job_id, logged, actual in rows
    ]
