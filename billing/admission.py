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
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Integer,
    Table,
    bindparam,
    func,
    literal_column,
    select,
    update,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import GenericFunction

from models import Account, Job, Plan

# An account without a plan (none in practice) still runs its jobs, one at a time.
NO_PLAN_LIMIT = 1


@dataclass(frozen=True)
class Dispatch:
    """A job that took a slot in this transaction: send it to the broker after commit."""

    job_id: str
    operation: str


# Statuses as SQL literals, not bound parameters: a planner may use a partial index only
# when the query's condition implies the index's, and `status IN (?, ?)` implies nothing
# (SQLite then walked every job the account ever had, twice per admission).
_QUEUED: ColumnElement[str] = literal_column("'queued'")
_RUNNING: ColumnElement[str] = literal_column("'running'")


def holds_slot() -> ColumnElement[bool]:
    """The SQL condition of a job holding a slot (index `ix_jobs_slots`)."""
    return Job.status.in_([_QUEUED, _RUNNING]) & Job.dispatched_at.is_not(None)


def waiting() -> ColumnElement[bool]:
    """The SQL condition of a job waiting for a slot (index `ix_jobs_waiting`)."""
    return (Job.status == _QUEUED) & Job.dispatched_at.is_(None)


# Admission runs on every submission and every ending: prebuilt Core statements with
# bound parameters, as the ledger's hot path.
_jobs = cast(Table, Job.__table__)
_accounts = cast(Table, Account.__table__)
_plans = cast(Table, Plan.__table__)
_p_account = bindparam("p_account", type_=_accounts.c.id.type)
_p_now = bindparam("p_now", type_=_jobs.c.dispatched_at.type)
_slot = holds_slot()
_waiting = waiting()

# FOR NO KEY UPDATE: serialises with the ledger's UPDATEs of the account row, but not
# with the key-share locks that inserting a job (its foreign key) takes on it.
_LOCK = select(_accounts.c.id).where(_accounts.c.id == _p_account).with_for_update(key_share=True)
_LIMIT = (
    select(func.coalesce(_plans.c.max_concurrent_jobs, NO_PLAN_LIMIT))
    .select_from(_accounts.outerjoin(_plans, _plans.c.id == _accounts.c.plan_id))
    .where(_accounts.c.id == _p_account)
    .scalar_subquery()
)
_SLOTS = (
    select(func.count())
    .select_from(_jobs)
    .where(_jobs.c.account_id == _p_account, _slot)
    .scalar_subquery()
)
_FREE = _LIMIT - _SLOTS


class greatest(GenericFunction[int]):  # noqa: N801 (a SQL function's name)
    """`greatest(a, b)`; SQLite spells it `max(a, b)`."""

    type = Integer()
    name = "greatest"
    inherit_cache = True


@compiles(greatest, "sqlite")
def _greatest_on_sqlite(element: greatest, compiler: SQLCompiler, **kw: Any) -> str:
    return f"max({compiler.process(element.clauses, **kw)})"


# The slots in use are counted once (`CASE WHEN free > 0 THEN free` counted them twice).
_FREE_OR_NONE = greatest(func.coalesce(_FREE, 0), 0)  # no account row: no slots
# A CTE, not an IN (subquery): PostgreSQL may run a LIMITed subquery of an UPDATE more
# than once and take more rows than free slots; a locking CTE runs once. The free slots
# are counted in the same statement (one snapshot, taken after the account row's lock).
_oldest_waiting = (
    select(_jobs.c.id)
    .where(_jobs.c.account_id == _p_account, _waiting)
    .order_by(_jobs.c.created_at, _jobs.c.id)
    .limit(_FREE_OR_NONE)
    .with_for_update(skip_locked=True, key_share=True)
    .cte("oldest_waiting")
)
_ADMIT = (
    update(_jobs)
    .where(_jobs.c.id == _oldest_waiting.c.id, _waiting)
    .values(dispatched_at=_p_now, sent_at=_p_now)
    .returning(_jobs.c.id, _jobs.c.operation, _jobs.c.created_at)
)


def concurrency_limit(session: Session, account_id: str) -> int:
    return int(session.execute(select(_LIMIT), {"p_account": account_id}).scalar_one())


def admit(
    session: Session, account_id: str, now: datetime, *, account_locked: bool = False
) -> list[Dispatch]:
    """Give the account's free slots to its oldest waiting jobs; the jobs to send.

    PostgreSQL: the account row lock serialises admissions of one account, and the
    statement after it (READ COMMITTED) sees what the previous holder committed; waiting
    rows another transaction has locked (a cancel) are skipped, never waited for.
    `account_locked`: this transaction already holds that lock (a submission's reserve
    UPDATE took it), so admission is one statement. SQLite's BEGIN IMMEDIATE serialises
    every writer: no lock to take.
    """
    connection = session.connection()
    params: dict[str, Any] = {"p_account": account_id, "p_now": now}
    if not account_locked and connection.dialect.name == "postgresql":
        connection.execute(_LOCK, params)
    rows = connection.execute(_ADMIT, params).all()
    return [
        Dispatch(row.id, row.operation) for row in sorted(rows, key=lambda r: (r.created_at, r.id))
    ]


def _count(session: Session, account_id: str, condition: ColumnElement[bool]) -> int:
    query = select(func.count()).select_from(Job).where(Job.account_id == account_id, condition)
    return int(session.scalar(query) or 0)


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
