"""Job lifecycle: submit (hold + job in one transaction), run, settle or fail, cancel.

Status moves are conditional UPDATEs, so a redelivered task, a late cancel or the
hold sweeper can race a worker and still only one of them wins.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, and_, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from billing import ledger
from billing.errors import IdempotencyConflict, InvalidInput, JobNotCancellable, NotFound
from billing.ledger import UsageRecord
from billing.operations import OPERATIONS, Operation, get_operation, validate_input
from billing.policy import resolve_model
from billing.pricing import Usage, actual_charge, estimate_hold
from billing.webhook_urls import STRICT_URLS, UrlPolicy
from models import (
    FINAL_JOB_STATUSES,
    JOB_STATUSES,
    Account,
    AIModelConfig,
    Base,
    CreditReservation,
    Job,
    Keyword,
    Site,
    as_utc,
    new_id,
    utcnow,
)

MAX_PAGE_SIZE = 100


@dataclass(frozen=True)
class JobRequest:
    operation: object
    input: object
    site_id: str | None = None
    model: str | None = None
    webhook_url: str | None = None
    idempotency_key: str | None = None

    def fingerprint(self) -> str:
        body = {
            "operation": self.operation,
            "input": self.input,
            "site_id": self.site_id,
            "model": self.model,
            "webhook_url": self.webhook_url,
        }
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Submission:
    job: Job
    created: bool


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


def submit_job(
    session: Session,
    account: Account,
    request: JobRequest,
    hold_ttl: timedelta,
    url_policy: UrlPolicy = STRICT_URLS,
) -> Submission:
    operation = get_operation(request.operation)
    job_input = validate_input(operation, request.input)
    if request.idempotency_key is not None:
        _check_key(request.idempotency_key)
        existing = _job_for_key(session, account.id, request.idempotency_key)
        if existing is not None:
            return Submission(_same_request(existing, request), created=False)
    if request.site_id is not None:
        _own_site(session, account.id, request.site_id)
    if request.webhook_url is not None:
        url_policy.check(request.webhook_url, must_resolve=False)
    if operation.name == "clustering":
        job_input = _expand_keyword_ids(session, account.id, request.site_id, job_input)
    model = resolve_model(session, account, operation, request.model)
    hold = estimate_hold(operation.name, model, job_input)
    job = Job(
        id=new_id("job"),
        account_id=account.id,
        site_id=request.site_id,
        operation=operation.name,
        input=job_input,
        model=model.name,
        status="queued",
        reserved_credits=hold,
        webhook_url=request.webhook_url,
        idempotency_key=request.idempotency_key,
        request_hash=request.fingerprint(),
    )
    if request.idempotency_key is None:
        session.add(job)
        session.flush()
    else:
        earlier = _insert_once(session, job, request)
        if earlier is not None:
            return Submission(earlier, created=False)
    ledger.reserve(session, account.id, job.id, hold, hold_ttl)
    return Submission(job, created=True)


def _insert_once(session: Session, job: Job, request: JobRequest) -> Job | None:
    """Insert a keyed job, or return the job a concurrent request with that key made."""
    try:
        with session.begin_nested():
            session.add(job)
            session.flush()
    except IntegrityError:
        existing = _job_for_key(session, job.account_id, request.idempotency_key or "")
        if existing is None:
            raise
        return _same_request(existing, request)
    return None


def _check_key(key: str) -> None:
    if not 1 <= len(key) <= 255 or not key.isprintable():
        raise InvalidInput(
            "Idempotency-Key must be 1 to 255 printable characters.",
            fields={"Idempotency-Key": "1-255 printable characters"},
        )


def _job_for_key(session: Session, account_id: str, key: str) -> Job | None:
    return session.scalar(
        select(Job).where(Job.account_id == account_id, Job.idempotency_key == key)
    )


def _same_request(existing: Job, request: JobRequest) -> Job:
    if existing.request_hash != request.fingerprint():
        raise IdempotencyConflict(
            "This Idempotency-Key was already used with a different request body.",
            job_id=existing.id,
        )
    return existing


def _own_site(session: Session, account_id: str, site_id: str) -> Site:
    site = session.get(Site, site_id)
    if site is None or site.account_id != account_id:
        raise NotFound(f"Site {site_id!r} not found.")
    return site


def _expand_keyword_ids(
    session: Session, account_id: str, site_id: str | None, job_input: dict[str, Any]
) -> dict[str, Any]:
    ids: list[int] = job_input.pop("keyword_ids", [])
    if not ids:
        return job_input
    query = select(Keyword.id, Keyword.keyword).where(
        Keyword.account_id == account_id, Keyword.id.in_(ids)
    )
    if site_id is not None:
        query = query.where(Keyword.site_id == site_id)
    found = {kw_id: keyword for kw_id, keyword in session.execute(query)}
    missing = [i for i in ids if i not in found]
    if missing:
        raise InvalidInput(
            f"Unknown keyword ids: {missing[:20]}.", fields={"input.keyword_ids": "unknown ids"}
        )
    keywords = list(dict.fromkeys([*job_input["keywords"], *(found[i] for i in ids)]))
    if len(keywords) > 1000:
        raise InvalidInput("Clustering takes at most 1000 keywords.")
    return {**job_input, "keywords": keywords}


def cancel_job(session: Session, account_id: str, job_id: str) -> Job:
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
    return job


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
    cursor: str | None = None,
    limit: int = 20,
) -> tuple[list[Job], str | None]:
    if status is not None and status not in JOB_STATUSES:
        raise InvalidInput(f"Unknown status {status!r}.", fields={"status": str(JOB_STATUSES)})
    if operation is not None and operation not in OPERATIONS:
        raise InvalidInput(f"Unknown operation {operation!r}.", fields={"operation": "unknown"})
    limit = _page_size(limit)
    query: Select[Job] = select(Job).where(Job.account_id == account_id)
    if status:
        query = query.where(Job.status == status)
    if operation:
        query = query.where(Job.operation == operation)
    if cursor:
        created, job_id = _decode_cursor(cursor)
        when = datetime.fromisoformat(created)
        query = query.where(
            or_(Job.created_at < when, and_(Job.created_at == when, Job.id < job_id))
        )
    rows = list(
        session.scalars(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1))
    )
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        last = rows[-1]
        next_cursor = encode_cursor(as_utc(last.created_at).isoformat(), last.id)
    return rows, next_cursor


def _page_size(limit: int) -> int:
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise InvalidInput(
            f"limit must be between 1 and {MAX_PAGE_SIZE}.", fields={"limit": "1-100"}
        )
    return limit


def encode_cursor(*parts: str) -> str:
    return base64.urlsafe_b64encode("|".join(parts).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[str, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        first, second = raw.split("|", 1)
        datetime.fromisoformat(first)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidInput("Invalid cursor.", fields={"cursor": "invalid"}) from None
    return first, second


def decode_int_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        return int(raw)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidInput("Invalid cursor.", fields={"cursor": "invalid"}) from None


# --- the worker side -------------------------------------------------------------


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
) -> bool:
    """Settle at the actual cost and store the result; False if someone got there first."""
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
        return False
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
    return True


def fail_job(
    session: Session, job_id: str, code: str, message: str, *, expired: bool = False
) -> bool:
    """Release the hold and mark the job failed; False if it was already final."""
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


def sweep_expired_holds(session: Session, now: datetime) -> list[str]:
    """Release holds past their expiry and fail their jobs. Returns the job ids."""
    swept = []
    for job_id in ledger.expired_hold_job_ids(session, now):
        if fail_job(
            session,
            job_id,
            "hold_expired",
            "The job did not finish before its credit hold expired; nothing was charged.",
            expired=True,
        ):
            swept.append(job_id)
    return swept


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
    }


def _iso(value: datetime | None) -> str | None:
    return as_utc(value).isoformat() if value else None


def operation_of(name: str) -> Operation:
    return OPERATIONS[name]
