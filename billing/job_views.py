"""Reading jobs: one job, a page of jobs, and the public shape both are shown in
(the API and the webhooks use the same `job_view`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from billing.errors import InvalidInput, NotFound
from billing.operations import OPERATIONS
from billing.paging import Page, newest_first, page_of, page_size, time_cursor
from models import JOB_STATUSES, Job, as_utc


def get_job(session: Session, account_id: str, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None or job.account_id != account_id:
        raise NotFound(f"Job {job_id!r} not found.")
    return job


def list_jobs(
    session: Session,
    account_id: str,
    *,
    status: str | None = None,
    operation: str | None = None,
    automation_id: str | None = None,
    cursor: str | None = None,
    limit: int = 20,
) -> Page[Job]:
    """Newest first."""
    if status is not None and status not in JOB_STATUSES:
        raise InvalidInput(
            f"Unknown status {status!r}. Choose one of: {', '.join(JOB_STATUSES)}.",
            fields={"status": f"one of {', '.join(JOB_STATUSES)}"},
        )
    if operation is not None and operation not in OPERATIONS:
        raise InvalidInput(f"Unknown operation {operation!r}.", fields={"operation": "unknown"})
    limit = page_size(limit)
    query: Select[Job] = select(Job).where(Job.account_id == account_id)
    if status:
        query = query.where(Job.status == status)
    if operation:
        query = query.where(Job.operation == operation)
    if automation_id:
        query = query.where(Job.automation_id == automation_id)
    rows = session.scalars(newest_first(query, Job, cursor, limit)).all()
    return page_of(rows, limit, time_cursor)


def job_view(job: Job) -> dict[str, Any]:
    """The public shape of a job, shared by the API and the webhooks."""
    return {
        "id": job.id,
        "status": job.status,
        "operation": job.operation,
        "model": job.model,
        "site_id": job.site_id,
        "input": job.input,
        "reserved_credits": job.reserved_credits,
        "credits_charged": job.credits_charged,
        "result": job.result,
        "error": {"code": job.error_code, "message": job.error_message} if job.error_code else None,
        "attempts": job.attempts,
        "webhook_url": job.webhook_url,
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "cancel_requested_at": _iso(job.cancel_requested_at),
        "automation_id": job.automation_id,
    }


def _iso(value: datetime | None) -> str | None:
    return as_utc(value).isoformat() if value else None
