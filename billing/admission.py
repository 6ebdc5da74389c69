"""Per-account concurrency: which queued jobs may go to the broker now.

A job holds one of its account's slots from dispatch (`dispatched_at`) until it ends; an
account has at most its plan's `max_concurrent_jobs` of them. Jobs beyond that wait in
the database, `queued` and undispatched, and the broker carries only runnable work.

Admission runs under the account row's lock, counts the slots in use and gives the free
ones to the account's oldest waiting jobs (FIFO per account). Every path that takes a
slot runs here, so two API or worker processes cannot both fill the last one; a slot is
a job row, so none can leak: the job's ending frees it in the same transaction, and the
reconciler re-runs or ends a job whose worker died. Across accounts the broker is FIFO
and each account has at most its cap in it, so one account's backlog delays another's
jobs by at most its cap's share of the workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.orm import Session

from models import Account, Job, Plan

# An account without a plan (none in practice) still runs its jobs, one at a time.
NO_PLAN_LIMIT = 1


@dataclass(frozen=True)
class Dispatch:
    """A job that took a slot in this transaction: send it to the broker after commit."""

    job_id: str
    operation: str


def holds_slot() -> ColumnElement[bool]:
    """The SQL condition of a job holding a slot (index `ix_jobs_slots`)."""
    return Job.status.in_(("queued", "running")) & Job.dispatched_at.is_not(None)


def waiting() -> ColumnElement[bool]:
    """The SQL condition of a job waiting for a slot (index `ix_jobs_waiting`)."""
    return (Job.status == "queued") & Job.dispatched_at.is_(None)


def concurrency_limit(session: Session, account_id: str) -> int:
    limit = session.scalar(
        select(Plan.max_concurrent_jobs)
        .join(Account, Account.plan_id == Plan.id)
        .where(Account.id == account_id)
    )
    return int(limit) if limit is not None else NO_PLAN_LIMIT


def _count(session: Session, account_id: str, condition: ColumnElement[bool]) -> int:
    query = select(func.count()).select_from(Job).where(Job.account_id == account_id, condition)
    return int(session.scalar(query) or 0)


def admit(session: Session, account_id: str, now: datetime) -> list[Dispatch]:
    """Give the account's free slots to its oldest waiting jobs; the jobs to send.

    PostgreSQL: the account row lock serialises admissions of one account; waiting rows
    another transaction has locked (a cancel) are skipped, never waited for. SQLite's
    BEGIN IMMEDIATE serialises every writer.
    """
    # FOR NO KEY UPDATE: serialises with the ledger's UPDATEs of the account row, but not
    # with the key-share locks that inserting a job (its foreign key) takes on it.
    session.execute(
        select(Account.id).where(Account.id == account_id).with_for_update(key_share=True)
    )
    free = concurrency_limit(session, account_id) - _count(session, account_id, holds_slot())
    if free <= 0:
        return []
    rows = session.execute(
        select(Job.id, Job.operation)
        .where(Job.account_id == account_id, waiting())
        .order_by(Job.created_at, Job.id)
        .limit(free)
        .with_for_update(skip_locked=True, key_share=True)
    ).all()
    if not rows:
        return []
    session.execute(
        update(Job)
        .where(Job.id.in_([row.id for row in rows]), waiting())
        .values(dispatched_at=now, sent_at=now)
        .execution_options(synchronize_session=False)
    )
    return [Dispatch(row.id, row.operation) for row in rows]


def waiting_account_ids(session: Session, limit: int = 200) -> list[str]:
    """Accounts with jobs waiting for a slot (the reconciler admits them, e.g. after an
    admin raised a plan's cap)."""
    query = select(Job.account_id).where(waiting()).group_by(Job.account_id).limit(limit)
    return list(session.scalars(query))


def concurrency_view(session: Session, account: Account) -> dict[str, int]:
    """`GET /v1/account`'s `concurrency`: slots in use (dispatched or running), the
    plan's cap, and the jobs waiting for a slot."""
    return {
        "running": _count(session, account.id, holds_slot()),
        "limit": concurrency_limit(session, account.id),
        "queued": _count(session, account.id, waiting()),
    }
