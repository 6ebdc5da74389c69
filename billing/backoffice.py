"""What operators look up: accounts by email, status or plan; one account in full; jobs
by status across accounts (to find stuck work). Read-only."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from billing import ledger
from billing.accounts import account_view, api_key_view, get_account, user_view
from billing.errors import InvalidInput
from billing.job_views import job_view
from billing.paging import Page, newest_first, page_of, page_size, time_cursor
from models import ACCOUNT_STATUSES, JOB_STATUSES, Account, ApiKey, Job, Plan, User

RECENT_ROWS = 10


def _like_prefix(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


def _one_of(name: str, value: str | None, allowed: Sequence[str]) -> None:
    if value is not None and value not in allowed:
        raise InvalidInput(
            f"Unknown {name} {value!r}. Choose one of: {', '.join(allowed)}.",
            fields={name: f"one of {', '.join(allowed)}"},
        )


def find_accounts(
    session: Session,
    *,
    email: str | None = None,
    status: str | None = None,
    plan: str | None = None,
    cursor: str | None = None,
    limit: int = 20,
) -> Page[Account]:
    """Newest first. `email` matches the start of any member's email, ignoring case."""
    _one_of("status", status, ACCOUNT_STATUSES)
    limit = page_size(limit)
    query: Select[Any] = select(Account)
    if email:
        members = select(User.account_id).where(
            User.email.like(_like_prefix(email.strip().lower()), escape="\\")
        )
        query = query.where(Account.id.in_(members))
    if status:
        query = query.where(Account.status == status)
    if plan:
        query = query.join(Plan, Account.plan_id == Plan.id).where(Plan.slug == plan)
    rows = session.scalars(newest_first(query, Account, cursor, limit)).all()
    return page_of(rows, limit, time_cursor)


def find_jobs(
    session: Session,
    *,
    status: str | None = None,
    account_id: str | None = None,
    operation: str | None = None,
    cursor: str | None = None,
    limit: int = 20,
) -> Page[Job]:
    """Newest first, across accounts (or one)."""
    _one_of("status", status, JOB_STATUSES)
    limit = page_size(limit)
    query: Select[Any] = select(Job)
    if status:
        query = query.where(Job.status == status)
    if account_id:
        query = query.where(Job.account_id == account_id)
    if operation:
        query = query.where(Job.operation == operation)
    rows = session.scalars(newest_first(query, Job, cursor, limit)).all()
    return page_of(rows, limit, time_cursor)


def admin_job_view(job: Job) -> dict[str, Any]:
    return {**job_view(job), "account_id": job.account_id}


def account_detail(session: Session, account_id: str) -> dict[str, Any]:
    """The account as its owner sees it, plus members, keys, recent jobs and transactions."""
    account = get_account(session, account_id)
    users = session.scalars(
        select(User).where(User.account_id == account.id).order_by(User.created_at)
    ).all()
    keys = session.scalars(
        select(ApiKey).where(ApiKey.account_id == account.id).order_by(ApiKey.created_at)
    ).all()
    jobs = find_jobs(session, account_id=account.id, limit=RECENT_ROWS)
    transactions = ledger.list_transactions(session, account.id, cursor=None, limit=RECENT_ROWS)
    return {
        **account_view(session, account),
        "users": [user_view(user) for user in users],
        "api_keys": [api_key_view(key) for key in keys],
        "recent_jobs": [job_view(job) for job in jobs.rows],
        "recent_transactions": [ledger.transaction_view(t) for t in transactions.rows],
    }
