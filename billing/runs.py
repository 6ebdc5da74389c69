"""A job's run: start it, then end it exactly once (succeed, fail, cancel, expire).

Status moves are conditional UPDATEs, so a redelivered task, a late cancel or the
hold sweeper can race a worker and still only one of them wins. Every ending queues
the job's webhook event in the same transaction and hands the delivery ids back for
the caller to enqueue after commit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from billing import ledger
from billing.errors import JobNotCancellable
from billing.job_views import get_job
from billing.ledger import UsageRecord
from billing.pricing import Usage, actual_charge
from billing.webhooks import queue_job_event
from models import FINAL_JOB_STATUSES, AIModelConfig, Base, CreditReservation, Job, utcnow


@dataclass(frozen=True)
class JobRun:
    """What a worker needs to call the provider, read once at start."""

    job_id: str
    account_id: str
    site_id: str | None
    operation: str
    input: dict[str, Any]
    model: str
    provider_model: str
    hold: int
    attempts: int


@dataclass(frozen=True)
class Ending:
    """Jobs that reached a final state in this transaction, and the webhook deliveries
    to enqueue once it commits."""

    job_ids: list[str] = field(default_factory=list)
    deliveries: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.job_ids)


def _ended(session: Session, job_ids: list[str], now: datetime | None = None) -> Ending:
    queued = [queue_job_event(session, job_id, now or utcnow()) for job_id in job_ids]
    return Ending(job_ids, [d for d in queued if d is not None])


def start_job(session: Session, job_id: str) -> JobRun | None:
    """Mark running and return what to run, or None when there is nothing to do.

    `running` is accepted too: a task redelivered after its worker died runs again,
    and the settle gate keeps the charge single.
    """
    started = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(("queued", "running")))
        .values(
            status="running",
            attempts=Job.attempts + 1,
            started_at=func.coalesce(Job.started_at, utcnow()),
        )
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    if not started:
        return None
    row = session.execute(
        select(Job, CreditReservation.amount, AIModelConfig.provider_model)
        .join(CreditReservation, CreditReservation.job_id == Job.id)
        .join(AIModelConfig, AIModelConfig.name == Job.model)
        .where(Job.id == job_id, CreditReservation.status == "held")
    ).one_or_none()
    if row is None:
        return None
    job, hold, provider_model = row
    return JobRun(
        job_id=job.id,
        account_id=job.account_id,
        site_id=job.site_id,
        operation=job.operation,
        input=dict(job.input),
        model=job.model,
        provider_model=provider_model,
        hold=hold,
        attempts=job.attempts,
    )


def complete_job(
    session: Session, run: JobRun, usage: Usage, result: dict[str, Any], artifacts: list[Base]
) -> Ending:
    """Settle at the actual cost and store the result; empty if someone got there first."""
    model = session.get(AIModelConfig, run.model)
    if model is None:
        raise LookupError(f"model {run.model!r} is no longer configured")
    charge = actual_charge(model, usage, run.hold)
    posted = ledger.settle(
        session,
        run.job_id,
        charge,
        UsageRecord(
            operation=run.operation,
            model=run.model,
            tokens_in=usage.tokens_in,
            tokens_out=usage.tokens_out,
            images=usage.images,
            site_id=run.site_id,
            items_created=len(artifacts),
        ),
    )
    if posted is None:
        return Ending()
    session.execute(
        update(Job)
        .where(Job.id == run.job_id)
        .values(
            status="succeeded",
            credits_charged=-posted.amount,
            result=result,
            error_code=None,
            error_message=None,
            finished_at=utcnow(),
        )
        .execution_options(synchronize_session=False)
    )
    session.add_all(artifacts)
    return _ended(session, [run.job_id])


def fail_job(
    session: Session, job_id: str, code: str, message: str, *, expired: bool = False
) -> Ending:
    """Release the hold and mark the job failed; empty if it was already final."""
    if not _fail(session, job_id, code, message, expired=expired):
        return Ending()
    return _ended(session, [job_id])


def _fail(session: Session, job_id: str, code: str, message: str, *, expired: bool) -> bool:
    ledger.release(session, job_id, expired=expired)
    failed = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.not_in(FINAL_JOB_STATUSES))
        .values(
            status="failed", error_code=code, error_message=message[:2000], finished_at=utcnow()
        )
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    return bool(failed)


def cancel_job(session: Session, account_id: str, job_id: str) -> Ending:
    """Cancel a queued job and release its hold (another account's job: 404)."""
    cancelled = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.account_id == account_id, Job.status == "queued")
        .values(
            status="cancelled",
            finished_at=utcnow(),
            error_code="cancelled",
            error_message="Cancelled by the account before it started.",
        )
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    job = get_job(session, account_id, job_id)
    if not cancelled:
        raise JobNotCancellable(
            f"Job is {job.status}; only queued jobs can be cancelled.", status=job.status
        )
    ledger.release(session, job_id)
    session.refresh(job)
    return _ended(session, [job_id])


def sweep_expired_holds(session: Session, now: datetime) -> Ending:
    """Release holds past their expiry and fail their jobs."""
    swept = [
        job_id
        for job_id in ledger.expired_hold_job_ids(session, now)
        if _fail(
            session,
            job_id,
            "hold_expired",
            "The job did not finish before its credit hold expired; nothing was charged.",
            expired=True,
        )
    ]
    return _ended(session, swept, now)
