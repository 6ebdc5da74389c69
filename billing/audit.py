"""The ledger's invariants (DESIGN.md), checked over the whole database.

Per job: its hold is open exactly while it is queued or running; a settled hold (a
success, or a failure or cancel that paid for the provider's usage) has one deduction
and one usage log equal to `credits_charged`; any other hold has neither and charged 0.

Per automation run: its hold == what is still pooled + what it released + the holds
carved from it (each job's charge is capped at its carved hold, so the run's charges
never exceed its hold); a run's job holds only what was carved from that run; an ended
run pools nothing. An account's reserved credits are its open job holds plus its runs'
pools.

Run by `python -m ops audit` / `make audit` and at the end of every end-to-end test.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

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
    """Each transaction's balance_after is the previous one plus its amount."""
    violations = []
    last: dict[str, int] = defaultdict(int)
    for account_id, txn_id, amount, balance_after in session.execute(
        select(
            CreditTransaction.account_id,
            CreditTransaction.id,
            CreditTransaction.amount,
            CreditTransaction.balance_after,
        ).order_by(CreditTransaction.account_id, CreditTransaction.id)
    ):
        if balance_after != last[account_id] + amount:
            violations.append(
                f"transaction {txn_id} (account {account_id}): balance_after {balance_after} "
                f"!= previous {last[account_id]} + amount {amount}"
            )
        last[account_id] = balance_after
    return violations


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
