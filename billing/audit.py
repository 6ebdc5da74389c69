"""The ledger's invariants (DESIGN.md), checked over the whole database.

Per job: its hold is open exactly while it is queued or running; a settled hold (a
success, or a failure or cancel that paid for the provider's usage) has one deduction
and one usage log equal to `credits_charged`; any other hold has neither and charged 0.

Per automation run: its hold == what is still pooled + what it released + the holds
carved from it (each job's charge is capped at its carved hold, so the run's charges
never exceed its hold); a run's job holds only what was carved from that run; an ended
run pools nothing. An account's reserved credits are its open job holds plus its runs'
pools.

Money links: a job's hold, deduction and usage log are on the job's account, its
deduction is at most its hold and equals its usage log. Shapes: a deduction has a job,
a grant adds credits (only an adjustment takes them back), a payment's or period's grant
has its reference, a top-up is a paid purchase of those credits, no balance was ever < 0.

Run by `python -m ops audit` / `make audit` and at the end of every end-to-end test.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session, aliased

from billing.ledger import REFERENCED_GRANTS
from models import (
    FINAL_JOB_STATUSES,
    FINAL_RUN_STATUSES,
    Account,
    AutomationRun,
    CreditReservation,
    CreditTransaction,
    CreditUsageLog,
    Job,
    Purchase,
)


def audit(session: Session) -> list[str]:
    """Every violation, each named; an empty list means the ledger is sound."""
    violations: list[str] = []
    posted = _pairs(
        session.execute(
            select(CreditTransaction.account_id, func.sum(CreditTransaction.amount)).group_by(
                CreditTransaction.account_id
            )
        ).all()
    )
    held = _pairs(
        session.execute(
            select(CreditReservation.account_id, func.sum(CreditReservation.amount))
            .where(CreditReservation.status == "held")
            .group_by(CreditReservation.account_id)
        ).all()
    )
    for account_id, pooled in session.execute(
        select(AutomationRun.account_id, func.sum(AutomationRun.held_credits)).group_by(
            AutomationRun.account_id
        )
    ):
        held[account_id] = (held.get(account_id) or 0) + int(pooled or 0)
    for account_id, credits, reserved in session.execute(
        select(Account.id, Account.credits, Account.reserved_credits)
    ):
        if credits != (posted.get(account_id) or 0):
            violations.append(
                f"account {account_id}: credits {credits} != sum of transactions "
                f"{posted.get(account_id) or 0}"
            )
        if reserved != (held.get(account_id) or 0):
            violations.append(
                f"account {account_id}: reserved_credits {reserved} != sum of open holds "
                f"{held.get(account_id) or 0}"
            )
        if not 0 <= reserved <= credits:
            violations.append(
                f"account {account_id}: reserved_credits {reserved} outside 0..credits {credits}"
            )
    violations += _balance_chain(session)
    violations += _job_holds(session)
    violations += _usage_sources(session)
    violations += _automation_runs(session)
    violations += _purchases(session)
    violations += _money_links(session)
    violations += _grants(session)
    return violations


def _money_links(session: Session) -> list[str]:
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


def _grants(session: Session) -> list[str]:
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


def _purchases(session: Session) -> list[str]:
    """A paid purchase has exactly its grant (its credits, its account); any other has
    none, and no grant names it."""
    violations = []
    granted = _pairs(
        session.execute(
            select(CreditTransaction.reference, func.count())
            .join(Purchase, Purchase.id == CreditTransaction.reference)
            .group_by(CreditTransaction.reference)
        ).all()
    )
    rows = session.execute(
        select(
            Purchase.id,
            Purchase.status,
            Purchase.account_id,
            Purchase.credits,
            CreditTransaction.account_id,
            CreditTransaction.amount,
        ).outerjoin(CreditTransaction, CreditTransaction.id == Purchase.transaction_id)
    )
    for purchase_id, status, account_id, credits, txn_account, txn_amount in rows:
        if status == "paid" and (txn_account, txn_amount) != (account_id, credits):
            violations.append(
                f"purchase {purchase_id}: paid, but its grant is {txn_amount} credits to "
                f"{txn_account} (want {credits} to {account_id})"
            )
        if status != "paid" and (txn_amount is not None or granted.get(purchase_id)):
            violations.append(f"purchase {purchase_id}: {status}, but credits were granted")
        if granted.get(purchase_id, 0) > 1:
            violations.append(f"purchase {purchase_id}: granted {granted[purchase_id]} times")
    return violations


def _usage_sources(session: Session) -> list[str]:
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


def _automation_runs(session: Session) -> list[str]:
    """A run's hold is fully accounted for, and its jobs spend only from it."""
    violations = []
    carved = _pairs(
        session.execute(
            select(CreditReservation.automation_id, func.sum(CreditReservation.amount))
            .where(CreditReservation.automation_id.is_not(None))
            .group_by(CreditReservation.automation_id)
        ).all()
    )
    runs = session.execute(
        select(
            AutomationRun.id,
            AutomationRun.status,
            AutomationRun.reserved_credits,
            AutomationRun.held_credits,
            AutomationRun.released_credits,
        )
    )
    for run_id, status, reserved, pooled, released in runs:
        in_jobs = carved.get(run_id) or 0
        if reserved != pooled + released + in_jobs:
            violations.append(
                f"automation {run_id}: hold {reserved} != pooled {pooled} + released "
                f"{released} + carved into jobs {in_jobs}"
            )
        if status in FINAL_RUN_STATUSES and pooled:
            violations.append(f"automation {run_id}: {status} but still pools {pooled}")
    strays = session.execute(
        select(Job.id, Job.automation_id, CreditReservation.automation_id)
        .join(CreditReservation, CreditReservation.job_id == Job.id)
        .join(AutomationRun, AutomationRun.id == Job.automation_id, isouter=True)
        .where(
            (AutomationRun.id.is_not(None) | CreditReservation.automation_id.is_not(None)),
            CreditReservation.automation_id.is_distinct_from(Job.automation_id),
        )
    )
    violations += [
        f"job {job_id}: of automation {run!r} but its hold was carved from {source!r}"
        for job_id, run, source in strays
    ]
    return violations


def _balance_chain(session: Session) -> list[str]:
    """Each transaction's balance_after is the previous one plus its amount. Compared in
    SQL (a window over each account's transactions): only the breaks come back, so a
    ledger of millions of rows is not loaded into this process."""
    txn = CreditTransaction
    previous = func.coalesce(
        func.lag(txn.balance_after).over(partition_by=txn.account_id, order_by=txn.id), 0
    )
    chain = select(
        txn.account_id, txn.id, txn.amount, txn.balance_after, previous.label("previous")
    ).subquery()
    rows = session.execute(
        select(chain)
        .where(chain.c.balance_after != chain.c.previous + chain.c.amount)
        .order_by(chain.c.account_id, chain.c.id)
    )
    return [
        f"transaction {txn_id} (account {account_id}): balance_after {balance_after} "
        f"!= previous {previous_balance} + amount {amount}"
        for account_id, txn_id, amount, balance_after, previous_balance in rows
    ]


def _job_holds(session: Session) -> list[str]:
    violations = []
    deductions = _pairs(
        session.execute(
            select(CreditTransaction.job_id, func.count())
            .where(CreditTransaction.type == "deduction")
            .group_by(CreditTransaction.job_id)
        ).all()
    )
    deducted = _pairs(
        session.execute(
            select(CreditTransaction.job_id, func.sum(CreditTransaction.amount))
            .where(CreditTransaction.type == "deduction")
            .group_by(CreditTransaction.job_id)
        ).all()
    )
    logs = _pairs(
        session.execute(
            select(CreditUsageLog.job_id, func.count()).group_by(CreditUsageLog.job_id)
        ).all()
    )
    rows = session.execute(
        select(Job.id, Job.status, Job.credits_charged, CreditReservation.status).outerjoin(
            CreditReservation, CreditReservation.job_id == Job.id
        )
    )
    for job_id, status, charged, hold_status in rows:
        if hold_status is None:
            violations.append(f"job {job_id}: has no credit hold")
            continue
        final = status in FINAL_JOB_STATUSES
        if final and hold_status == "held":
            violations.append(f"job {job_id}: {status} but its hold is still open")
        if not final and hold_status != "held":
            violations.append(f"job {job_id}: {status} but its hold is {hold_status}")
        # Usage is billed whatever the outcome: a failed or cancelled job may have a
        # settled hold too (its usage, capped at the hold), but a success always has.
        if status == "succeeded" and hold_status not in ("settled", "held"):
            violations.append(f"job {job_id}: status {status} with hold {hold_status}")
        settled = hold_status == "settled"
        if settled and (deductions.get(job_id, 0) != 1 or logs.get(job_id, 0) != 1):
            violations.append(
                f"job {job_id}: settled with {deductions.get(job_id, 0)} deductions and "
                f"{logs.get(job_id, 0)} usage logs (want 1 and 1)"
            )
        if not settled and (deductions.get(job_id) or logs.get(job_id) or charged):
            violations.append(f"job {job_id}: charged although its hold is {hold_status}")
        deduction = -(deducted.get(job_id) or 0)
        if settled and deduction != charged:
            violations.append(f"job {job_id}: credits_charged {charged} != deduction {deduction}")
    return violations


def _pairs(rows: Iterable[Any]) -> dict[str, int]:
    return {key: value for key, value in rows}
