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

Every check is SQL that returns only the rows breaking it (aggregates and joins run in
the database), so the audit's memory does not grow with the number of accounts, jobs or
transactions: `python -m ops audit` can run against production (bench/audit.py).

Run by `python -m ops audit` / `make audit` and at the end of every end-to-end test.
"""

from __future__ import annotations

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from billing.audit_links import grants, money_links, purchases, usage_sources
from models import (
    FINAL_JOB_STATUSES,
    FINAL_RUN_STATUSES,
    Account,
    AutomationRun,
    CreditReservation,
    CreditTransaction,
    CreditUsageLog,
    Job,
)


def audit(session: Session) -> list[str]:
    """Every violation, each named; an empty list means the ledger is sound."""
    violations = _accounts(session)
    violations += _balance_chain(session)
    violations += _job_holds(session)
    violations += usage_sources(session)
    violations += _automation_runs(session)
    violations += purchases(session)
    violations += money_links(session)
    violations += grants(session)
    return violations


def _accounts(session: Session) -> list[str]:
    """Each account's balance is the sum of its transactions, its reserved credits the
    sum of its open holds and its runs' pools, within 0..credits."""
    txn, hold, run = CreditTransaction, CreditReservation, AutomationRun
    posted = (
        select(txn.account_id, func.sum(txn.amount).label("total"))
        .group_by(txn.account_id)
        .subquery()
    )
    held = (
        select(hold.account_id, func.sum(hold.amount).label("total"))
        .where(hold.status == "held")
        .group_by(hold.account_id)
        .subquery()
    )
    pooled = (
        select(run.account_id, func.sum(run.held_credits).label("total"))
        .group_by(run.account_id)
        .subquery()
    )
    open_total = func.coalesce(held.c.total, 0) + func.coalesce(pooled.c.total, 0)
    rows = session.execute(
        select(
            Account.id,
            Account.credits,
            Account.reserved_credits,
            posted.c.total,
            held.c.total,
            pooled.c.total,
        )
        .outerjoin(posted, posted.c.account_id == Account.id)
        .outerjoin(held, held.c.account_id == Account.id)
        .outerjoin(pooled, pooled.c.account_id == Account.id)
        .where(
            or_(
                Account.credits != func.coalesce(posted.c.total, 0),
                Account.reserved_credits != open_total,
                Account.reserved_credits < 0,
                Account.reserved_credits > Account.credits,
            )
        )
        .order_by(Account.id)
    )
    violations = []
    for account_id, credits, reserved, posted_sum, held_sum, pooled_sum in rows:
        total = posted_sum or 0
        in_holds = (held_sum or 0) + int(pooled_sum or 0)
        if credits != total:
            violations.append(
                f"account {account_id}: credits {credits} != sum of transactions {total}"
            )
        if reserved != in_holds:
            violations.append(
                f"account {account_id}: reserved_credits {reserved} != sum of open holds {in_holds}"
            )
        if not 0 <= reserved <= credits:
            violations.append(
                f"account {account_id}: reserved_credits {reserved} outside 0..credits {credits}"
            )
    return violations


def _automation_runs(session: Session) -> list[str]:
    """A run's hold is fully accounted for, and its jobs spend only from it."""
    hold = CreditReservation
    carved = (
        select(hold.automation_id, func.sum(hold.amount).label("total"))
        .where(hold.automation_id.is_not(None))
        .group_by(hold.automation_id)
        .subquery()
    )
    run = AutomationRun
    runs = session.execute(
        select(run.id, run.status, run.reserved_credits, run.held_credits,
               run.released_credits, carved.c.total)
        .outerjoin(carved, carved.c.automation_id == run.id)
        .where(
            or_(
                run.reserved_credits
                != run.held_credits + run.released_credits + func.coalesce(carved.c.total, 0),
                and_(run.status.in_(FINAL_RUN_STATUSES), run.held_credits != 0),
            )
        )
        .order_by(run.id)
    )  # fmt: skip
    violations = []
    for run_id, status, reserved, pooled, released, carved_total in runs:
        in_jobs = carved_total or 0
        if reserved != pooled + released + in_jobs:
            violations.append(
                f"automation {run_id}: hold {reserved} != pooled {pooled} + released "
                f"{released} + carved into jobs {in_jobs}"
            )
        if status in FINAL_RUN_STATUSES and pooled:
            violations.append(f"automation {run_id}: {status} but still pools {pooled}")
    strays = session.execute(
        select(Job.id, Job.automation_id, hold.automation_id)
        .join(hold, hold.job_id == Job.id)
        .join(run, run.id == Job.automation_id, isouter=True)
        .where(
            (run.id.is_not(None) | hold.automation_id.is_not(None)),
            hold.automation_id.is_distinct_from(Job.automation_id),
        )
    )
    violations += [
        f"job {job_id}: of automation {run_!r} but its hold was carved from {source!r}"
        for job_id, run_, source in strays
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
    """A job's hold is open exactly while it runs; a settled hold has one deduction and
    one usage log equal to the charge, any other hold neither. The counts and sums per
    job are joined in SQL, and only the jobs that break a rule come back."""
    txn, hold = CreditTransaction, CreditReservation
    deducted = (
        select(txn.job_id, func.count().label("n"), func.sum(txn.amount).label("total"))
        .where(txn.type == "deduction", txn.job_id.is_not(None))
        .group_by(txn.job_id)
        .subquery()
    )
    logged = (
        select(CreditUsageLog.job_id, func.count().label("n"))
        .group_by(CreditUsageLog.job_id)
        .subquery()
    )
    deductions, logs = func.coalesce(deducted.c.n, 0), func.coalesce(logged.c.n, 0)
    final = Job.status.in_(FINAL_JOB_STATUSES)
    settled = hold.status == "settled"
    rows = session.execute(
        select(Job.id, Job.status, Job.credits_charged, hold.status, deducted.c.n,
               deducted.c.total, logged.c.n)
        .outerjoin(hold, hold.job_id == Job.id)
        .outerjoin(deducted, deducted.c.job_id == Job.id)
        .outerjoin(logged, logged.c.job_id == Job.id)
        .where(
            or_(
                hold.id.is_(None),
                and_(final, hold.status == "held"),
                and_(~final, hold.status != "held"),
                and_(Job.status == "succeeded", hold.status.not_in(("settled", "held"))),
                and_(settled, or_(deductions != 1, logs != 1,
                                  -func.coalesce(deducted.c.total, 0) != Job.credits_charged)),
                and_(~settled, or_(deductions != 0, logs != 0, Job.credits_charged != 0)),
            )
        )
        .order_by(Job.id)
    )  # fmt: skip
    violations = []
    for job_id, status, charged, hold_status, n_deductions, total, n_logs in rows:
        if hold_status is None:
            violations.append(f"job {job_id}: has no credit hold")
            continue
        is_final = status in FINAL_JOB_STATUSES
        if is_final and hold_status == "held":
            violations.append(f"job {job_id}: {status} but its hold is still open")
        if not is_final and hold_status != "held":
            violations.append(f"job {job_id}: {status} but its hold is {hold_status}")
        # Usage is billed whatever the outcome: a failed or cancelled job may have a
        # settled hold too (its usage, capped at the hold), but a success always has.
        if status == "succeeded" and hold_status not in ("settled", "held"):
            violations.append(f"job {job_id}: status {status} with hold {hold_status}")
        is_settled = hold_status == "settled"
        n_deductions, n_logs = n_deductions or 0, n_logs or 0
        if is_settled and (n_deductions != 1 or n_logs != 1):
            violations.append(
                f"job {job_id}: settled with {n_deductions} deductions and {n_logs} usage "
                "logs (want 1 and 1)"
            )
        if not is_settled and (n_deductions or n_logs or charged):
            violations.append(f"job {job_id}: charged although its hold is {hold_status}")
        deduction = -(total or 0)
        if is_settled and deduction != charged:
            violations.append(f"job {job_id}: credits_charged {charged} != deduction {deduction}")
    return violations
