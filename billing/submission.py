"""Submitting a job: validate, choose the model, hold the credits, write the job row and
admit it into a free concurrency slot, all in the caller's transaction (the caller sends
the admitted jobs to the broker after commit; the others wait, queued)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import inspect, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, make_transient_to_detached

from billing import budgets, ledger
from billing.admission import Dispatch, admit
from billing.errors import IdempotencyConflict, InvalidInput
from billing.operations import Operation, get_operation, validate_input
from billing.policy import Seen, resolve_model
from billing.sites import get_site
from billing.webhook_urls import STRICT_URLS, UrlPolicy
from models import Account, AIModelConfig, Job, new_id, utcnow


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
    # Jobs that took a slot (this one, unless older jobs of the account still wait).
    dispatches: list[Dispatch] = field(default_factory=list)


@dataclass(frozen=True)
class Quote:
    """The model a job would run on and the credits its submission would hold."""

    operation: Operation
    input: dict[str, Any]
    model: AIModelConfig
    credits: int


@dataclass(frozen=True)
class Estimate:
    quote: Quote
    available: int
    can_spend: bool
    within_budget: bool = True

    @property
    def affordable(self) -> bool:
        """Would the hold be taken right now (the reserve's and the budgets' tests)?"""
        return self.can_spend and self.within_budget and self.quote.credits <= self.available

    def view(self) -> dict[str, Any]:
        return {
            "operation": self.quote.operation.name,
            "model": self.quote.model.name,
            "credits": self.quote.credits,
            "affordable": self.affordable,
            "available": self.available,
            "within_budget": self.within_budget,
        }


def quote_job(
    session: Session,
    account: Account,
    operation: Operation,
    job_input: dict[str, Any],
    site_id: str | None,
    requested_model: str | None,
    seen: Seen | None = None,
) -> Quote:
    """Resolve the site, the input's references and the model, and price the hold.

    Both `submit_job` and `estimate_job` call this, so an estimate is the hold the
    submission then takes, to the credit. `seen`: what the caller's API-key read saw for
    the policy (billing.policy.Seen), if any.
    """
    if site_id is not None:
        get_site(session, account.id, site_id)
    job_input = operation.expand_input(session, account.id, site_id, job_input)
    model = resolve_model(session, account, operation, requested_model, seen)
    return Quote(operation, job_input, model, operation.hold(model, job_input))


def estimate_job(
    session: Session, account: Account, request: JobRequest, seen: Seen | None = None
) -> Estimate:
    """What a submission of `request` would run on and hold now; writes nothing."""
    operation = get_operation(request.operation)
    job_input = validate_input(operation, request.input)
    quote = quote_job(session, account, operation, job_input, request.site_id, request.model, seen)
    return Estimate(
        quote,
        account.available_credits,
        account.status in ledger.SPENDING_STATUSES,
        within_budget=budgets.exceeded(session, account, {operation.name: quote.credits}) is None,
    )


# The job row is one Core INSERT (ledger.INSERT_JOB), not the ORM's unit of work: ~0.3 ms
# less per submission (bench/admission.py); `_persistent` then gives the session its object.
_JOB_COLUMNS = tuple(attr.key for attr in inspect(Job).column_attrs)
_JOBS = inspect(Job).class_manager


def submit_job(
    session: Session,
    account: Account,
    request: JobRequest,
    hold_ttl: timedelta,
    url_policy: UrlPolicy = STRICT_URLS,
    seen: Seen | None = None,
) -> Submission:
    operation = get_operation(request.operation)
    job_input = validate_input(operation, request.input)
    if request.idempotency_key is not None:
        check_idempotency_key(request.idempotency_key)
        existing = _job_for_key(session, account.id, request.idempotency_key)
        if existing is not None:
            return Submission(_same_request(existing, request), created=False)
    if request.webhook_url is not None:
        url_policy.check(request.webhook_url, must_resolve=False)
    quote = quote_job(session, account, operation, job_input, request.site_id, request.model, seen)
    hold = quote.credits
    budgets.check(session, account, {operation.name: hold})
    row = {
        "id": new_id("job"),
        "account_id": account.id,
        "site_id": request.site_id,
        "operation": operation.name,
        "input": quote.input,
        "model": quote.model.name,
        "status": "queued",
        "reserved_credits": hold,
        "credits_charged": 0,
        "attempts": 0,
        "webhook_url": request.webhook_url,
        "idempotency_key": request.idempotency_key,
        "request_hash": request.fingerprint(),
        "created_at": utcnow(),
    }
    if request.idempotency_key is None:
        ledger.reserve_new_job(session, row, hold, hold_ttl)
        job = _persistent(session, row)
    else:
        earlier = _insert_once(session, row, request)
        if earlier is not None:
            return Submission(earlier, created=False)
        job = _persistent(session, row)
        ledger.reserve(session, account.id, job.id, hold, hold_ttl)
    # The reserve's UPDATE locked the account row: admission needs no lock of its own.
    dispatches = admit(session, account.id, utcnow(), account_locked=True)
    return Submission(job, created=True, dispatches=dispatches)


def _persistent(session: Session, row: dict[str, Any]) -> Job:
    """The inserted row as the session's object, as if loaded: every column set (the
    ones `row` leaves out are NULL), so reading it emits nothing and a change to it is
    flushed as an UPDATE. Filled the way a query's loading fills it (the instance's
    dict, no attribute events): ~30 us less than `Job(**row)`."""
    job: Job = _JOBS.new_instance()
    job.__dict__.update({name: row.get(name) for name in _JOB_COLUMNS})
    make_transient_to_detached(job)
    session.add(job)
    return job


def _insert_once(session: Session, row: dict[str, Any], request: JobRequest) -> Job | None:
    """Insert a keyed job, or return the job a concurrent request with that key made."""
    try:
        with session.begin_nested():
            session.connection().execute(ledger.INSERT_JOB, row)
    except IntegrityError:
        existing = _job_for_key(session, row["account_id"], request.idempotency_key or "")
        if existing is None:
            raise
        return _same_request(existing, request)
    return None


def check_idempotency_key(key: str) -> None:
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
