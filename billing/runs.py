"""A job's run: start it, then end it exactly once (succeed, fail, cancel, expire).

Status moves are conditional UPDATEs, so a redelivered task, a cancel, the reconciler
or the hold sweeper can race a worker and still only one of them wins. Every ending
closes the hold (settle or release) in the same transaction as the final status, frees
the job's concurrency slot and admits the account's next waiting job, and queues the
job's webhook event; it hands back the deliveries and dispatches to send after commit.

What is charged (README "What is charged"): usage the provider reported is billed
whatever the outcome (success, an answer cut off or not the expected JSON, a cancel
that arrived while the provider answered), capped at the hold; a run where the provider
billed nothing (5xx, timeouts, refusals, a cancel before the call) is charged nothing.
Usage nobody can be charged for is recorded in `billing.unbilled`.

Locks, in this order everywhere (PostgreSQL): the job row, its hold, the account row,
then other job rows only with SKIP LOCKED (admission), so endings, cancels, the sweeper
and the reconciler never wait on each other in a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, and_, exists, func, or_, select, update
from sqlalchemy.orm import Session

from billing import budgets, ledger, pipeline, policy, unbilled
from billing.admission import Dispatch, admit, holds_slot
from billing.errors import JobNotCancellable
from billing.job_views import get_job
from billing.ledger import UsageRecord
from billing.operations import get_operation
from billing.pricing import Charge, Usage, actual_charge
from billing.webhooks import queue_job_event
from models import (
    CATALOG_VERSION,
    FINAL_JOB_STATUSES,
    Account,
    AIModelConfig,
    AutomationRun,
    Base,
    CreditReservation,
    Job,
    Plan,
    as_utc,
    utcnow,
)


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
    # When the job was submitted (its queue wait, for the metrics).
    submitted_at: datetime | None = None


@dataclass(frozen=True)
class Outcome:
    """How a run ended, as the worker saw it.

    `usage`: what the provider reported (None: not called, or it billed nothing).
    `billable`: False for our own failure after the provider answered (recorded as
    unbilled usage, not charged). `error`: (code, message) when the run failed.
    """

    usage: Usage | None = None
    result: dict[str, Any] | None = None
    artifacts: list[Base] = field(default_factory=list)
    error: tuple[str, str] | None = None
    billable: bool = True


@dataclass(frozen=True)
class Ending:
    """Jobs that reached a final state in this transaction, the webhook deliveries and
    the jobs admitted into the slots they freed, to send once it commits."""

    job_ids: list[str] = field(default_factory=list)
    deliveries: list[str] = field(default_factory=list)
    dispatches: list[Dispatch] = field(default_factory=list)
    # A run's ending: the status its job ended in, and what it was charged.
    status: str | None = None
    credits_charged: int = 0
    cost_usd: Decimal = Decimal(0)

    def __bool__(self) -> bool:
        return bool(self.job_ids)


@dataclass(frozen=True)
class Refused:
    """A start that ended the job instead (`_refuse_model`): its ending, to send once the
    start's transaction commits."""

    ending: Ending


def ended(session: Session, jobs: list[tuple[str, str]], now: datetime | None = None) -> Ending:
    """After `jobs` ((job id, account id) pairs) reached their final state: queue their
    events and give their accounts' free slots to the next waiting jobs."""
    now = now or utcnow()
    queued = [queue_job_event(session, job_id, now) for job_id, _ in jobs]
    # An automation run's next jobs are made here, before admission gives them slots.
    queued += pipeline.continue_runs(session, [job_id for job_id, _ in jobs], now)
    dispatches = [
        dispatch
        for account_id in dict.fromkeys(account for _, account in jobs)
        for dispatch in admit(session, account_id, now)
    ]
    return Ending([job_id for job_id, _ in jobs], [d for d in queued if d is not None], dispatches)


def start_job(
    session: Session,
    job_id: str,
    *,
    now: datetime | None = None,
    stale_after: timedelta | None = None,
) -> JobRun | Refused | None:
    """Mark running and return what to run, or None when there is nothing to do
    (`Refused`: the job ended instead).

    Only a dispatched job starts (the broker carries admitted work only). A `running`
    job starts again when its worker stopped heart-beating for `stale_after` (a task
    redelivered after its worker died; None: whatever its heartbeat); one whose worker
    is alive is left alone, and the settle gate keeps a duplicate's charge single. A job
    whose cancel was requested does not start (the reconciler ends it). A job whose model
    its account's plan no longer allows does not run: it ends failed (`_refuse_model`).
    """
    now = now or utcnow()
    running_again = Job.status == "running"
    if stale_after is not None:
        running_again &= or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < now - stale_after)
    started = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            or_(Job.status == "queued", running_again),
            Job.dispatched_at.is_not(None),
            Job.cancel_requested_at.is_(None),
            ~_run_cancelled(),
        )
        .values(
            status="running",
            attempts=Job.attempts + 1,
            started_at=func.coalesce(Job.started_at, now),
            heartbeat_at=now,
        )
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    if not started:
        return None
    # The account's plan and the catalog's stamp ride on the read the start makes anyway.
    row = session.execute(
        select(Job, CreditReservation.amount, AIModelConfig.provider_model, Plan, CATALOG_VERSION)
        .join(CreditReservation, CreditReservation.job_id == Job.id)
        .join(Account, Account.id == Job.account_id)
        .outerjoin(Plan, Plan.id == Account.plan_id)
        .outerjoin(AIModelConfig, AIModelConfig.name == Job.model)
        .where(Job.id == job_id, CreditReservation.status == "held")
    ).one_or_none()
    if row is None:
        return None
    job, hold, provider_model, plan, catalog_version = row
    if not policy.may_run(session, plan, get_operation(job.operation), job.model, catalog_version):
        return Refused(_refuse_model(session, job.id, job.model, job.operation))
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
        submitted_at=as_utc(job.created_at),
    )


def _refuse_model(session: Session, job_id: str, model: str, operation: str) -> Ending:
    """A job whose model its account's plan no longer allows (a downgrade, a model
    switched off while it waited) ends failed, uncharged, by the ending every failure
    takes; it does not run on another model, its hold was priced for this one."""
    return fail_job(
        session,
        job_id,
        "model_not_allowed",
        f"Your plan no longer allows {model} for {operation}; nothing was charged.",
    )


def _run_cancelled() -> ColumnElement[bool]:
    """SQL: the job belongs to an automation run whose cancel was requested."""
    return exists().where(
        AutomationRun.id == Job.automation_id, AutomationRun.cancel_requested_at.is_not(None)
    )


def record_heartbeats(session: Session, job_ids: list[str], now: datetime) -> list[str]:
    """One statement for every job a worker process is running; returns the ids whose
    cancel was requested (or that are no longer running), so their threads stop."""
    rows = session.execute(
        update(Job)
        .where(Job.id.in_(job_ids), Job.status == "running")
        .values(heartbeat_at=now)
        .returning(Job.id, Job.cancel_requested_at)
        .execution_options(synchronize_session=False)
    ).all()
    alive = {row.id for row in rows if row.cancel_requested_at is None}
    return [job_id for job_id in job_ids if job_id not in alive]


def should_stop(session: Session, job_id: str) -> bool:
    """A safe point's check: was the job's cancel requested, or did it end meanwhile?"""
    row = session.execute(
        select(Job.status, Job.cancel_requested_at).where(Job.id == job_id)
    ).one_or_none()
    return row is None or row.status != "running" or row.cancel_requested_at is not None


def finish_run(session: Session, run: JobRun, outcome: Outcome) -> Ending:
    """End a run exactly once and charge what the provider billed; see the module doc.

    A cancel requested while the job ran wins over its result: the job ends `cancelled`
    and pays only for usage the provider reported. If the job had already ended, the
    answer is a late one (`_late_answer`).
    """
    job = session.execute(
        select(Job.status, Job.cancel_requested_at)
        .where(Job.id == run.job_id)
        .with_for_update(key_share=True)
    ).one()
    cancelled = job.cancel_requested_at is not None
    if job.status in FINAL_JOB_STATUSES:
        return _late_answer(session, run, outcome, cancelled=cancelled)
    status = _final_status(outcome, cancelled=cancelled)
    posted = _charge(session, run, outcome, status)
    if posted is None:  # the hold was closed although the job was not final
        raise RuntimeError(f"job {run.job_id} is {job.status} but its hold is closed")
    charged, cost_usd = posted
    code, message = _error(outcome, status, charged)
    succeeded = status == "succeeded"
    session.execute(
        update(Job)
        .where(Job.id == run.job_id, Job.status.not_in(FINAL_JOB_STATUSES))
        .values(
            status=status,
            credits_charged=charged,
            result=outcome.result if succeeded else None,
            error_code=code,
            error_message=message,
            finished_at=utcnow(),
        )
        .execution_options(synchronize_session=False)
    )
    if succeeded:
        session.add_all(outcome.artifacts)
    ending = ended(session, [(run.job_id, run.account_id)])
    return replace(ending, status=status, credits_charged=charged, cost_usd=cost_usd)


def complete_job(
    session: Session, run: JobRun, usage: Usage, result: dict[str, Any], artifacts: list[Base]
) -> Ending:
    """A successful run: settle at the actual cost and store the result."""
    return finish_run(session, run, Outcome(usage, result, artifacts))


def _final_status(outcome: Outcome, *, cancelled: bool) -> str:
    if cancelled:
        return "cancelled"
    return "failed" if outcome.error else "succeeded"


def _charge(
    session: Session, run: JobRun, outcome: Outcome, status: str
) -> tuple[int, Decimal] | None:
    """Settle the hold at the provider's billed usage, or release it; the credits
    charged and their USD cost, or None if the hold was no longer open."""
    if outcome.usage is None or not outcome.billable:
        if outcome.usage is not None:
            _unbilled(session, run, outcome.usage, "internal_error")
        return (0, Decimal(0)) if ledger.release(session, run.job_id) else None
    charge = _price(session, run, outcome.usage)
    posted = ledger.settle(session, run.job_id, charge, _usage_record(run, outcome, status))
    return None if posted is None else (-posted.amount, charge.cost_usd)


def _price(session: Session, run: JobRun, usage: Usage) -> Charge:
    model = session.get(AIModelConfig, run.model)
    if model is None:
        raise LookupError(f"model {run.model!r} is no longer configured")
    return actual_charge(model, usage, run.hold)


def _usage_record(run: JobRun, outcome: Outcome, status: str) -> UsageRecord:
    usage = outcome.usage or Usage()
    return UsageRecord(
        operation=run.operation,
        model=run.model,
        tokens_in=usage.tokens_in,
        tokens_out=usage.tokens_out,
        images=usage.images,
        site_id=run.site_id,
        items_created=len(outcome.artifacts) if status == "succeeded" else 0,
        outcome=status,
    )


def _error(outcome: Outcome, status: str, charged: int) -> tuple[str | None, str | None]:
    paid = (
        f" The provider's usage was charged: {charged} credits."
        if charged
        else " Nothing was charged."
    )
    if status == "cancelled":
        when = "while the provider answered" if outcome.usage else "before the provider answered"
        return "cancelled", f"Cancelled by the account {when}.{paid}"
    if outcome.error is None:
        return None, None
    code, message = outcome.error
    return code, (message[:1900] + paid)


def _late_answer(session: Session, run: JobRun, outcome: Outcome, *, cancelled: bool) -> Ending:
    """The job ended before this answer arrived. If its hold expired (the job looked
    dead), charge the usage from what the account still has; otherwise (another run or
    a cancel ended it) or if the account (its credits, or a budget its expired hold no
    longer reserved) cannot cover it, record it as unbilled. A job the account cancelled
    stays `cancelled` (charged, as a cancel while answering is)."""
    if outcome.usage is None:
        return Ending()
    # A run's job spends only from the run's hold: once that is closed, a late answer
    # is unbilled rather than charged from the account's balance.
    in_run = session.scalar(select(Job.automation_id).where(Job.id == run.job_id))
    if outcome.billable and in_run is None:
        status = _final_status(outcome, cancelled=cancelled)
        charge = _price(session, run, outcome.usage)
        posted = (
            ledger.settle_late(session, run.job_id, charge, _usage_record(run, outcome, status))
            if budgets.allow_late_charge(session, run.account_id, run.operation, charge.credits)
            else None
        )
        if posted is not None:
            return _record_late_ending(session, run, outcome, status, -posted.amount)
    hold = session.scalar(
        select(CreditReservation.status).where(CreditReservation.job_id == run.job_id)
    )
    reason = "expired_uncovered" if hold == "expired" else "duplicate_run"
    _unbilled(session, run, outcome.usage, reason if outcome.billable else "internal_error")
    return Ending()


def _record_late_ending(
    session: Session, run: JobRun, outcome: Outcome, status: str, charged: int
) -> Ending:
    """A late answer that was charged replaces the `hold_expired` failure: the account
    paid for it, so it gets the result (and the event for the new outcome)."""
    code, message = _error(outcome, status, charged)
    session.execute(
        update(Job)
        .where(Job.id == run.job_id)
        .values(
            status=status,
            credits_charged=charged,
            result=outcome.result if status == "succeeded" else None,
            error_code=code,
            error_message=message,
            finished_at=utcnow(),
        )
        .execution_options(synchronize_session=False)
    )
    if status == "succeeded":
        session.add_all(outcome.artifacts)
    delivery = queue_job_event(session, run.job_id, utcnow())
    return Ending([run.job_id], [delivery] if delivery else [], status=status)


def _unbilled(session: Session, run: JobRun, usage: Usage, reason: str) -> None:
    unbilled.record(
        session,
        account_id=run.account_id,
        job_id=run.job_id,
        operation=run.operation,
        model_name=run.model,
        usage=usage,
        hold=run.hold,
        reason=reason,
    )


def fail_unqueued(session: Session, job_id: str) -> Ending:
    """The broker refused the job just admitted: it fails uncharged, and its
    Idempotency-Key is freed, since the client was told to retry (a retry with that key
    submits anew rather than replaying the failure)."""
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.not_in(FINAL_JOB_STATUSES))
        .values(idempotency_key=None)
        .execution_options(synchronize_session=False)
    )
    return fail_job(session, job_id, "broker_unavailable", "The job could not be queued.")


def fail_job(
    session: Session, job_id: str, code: str, message: str, *, expired: bool = False
) -> Ending:
    """Mark the job failed and release its hold; empty if it was already final."""
    account_id = _end_uncharged(session, job_id, "failed", code, message, expired=expired)
    return ended(session, [(job_id, account_id)]) if account_id else Ending()


def _end_uncharged(
    session: Session,
    job_id: str,
    status: str,
    code: str,
    message: str,
    *,
    expired: bool = False,
    queued_only: bool = False,
) -> str | None:
    """Final status first (locks the job row), then release; the job's account, or None
    if it was already final (or, `queued_only`, not queued)."""
    current = Job.status == "queued" if queued_only else Job.status.not_in(FINAL_JOB_STATUSES)
    account_id = session.execute(
        update(Job)
        .where(Job.id == job_id, current)
        .values(status=status, error_code=code, error_message=message[:2000], finished_at=utcnow())
        .returning(Job.account_id)
        .execution_options(synchronize_session=False)
    ).scalar_one_or_none()
    if account_id is not None:
        ledger.release(session, job_id, expired=expired)
    return account_id


def cancel_job(session: Session, account_id: str, job_id: str) -> Ending:
    """Cancel a job of the account (another account's job: 404).

    Queued (waiting or dispatched): ends now, hold released. Running: the cancel is
    recorded and the worker ends the job at its next safe point (`finish_run`). Final:
    409.
    """
    job = get_job(session, account_id, job_id)
    if _end_uncharged(
        session,
        job_id,
        "cancelled",
        "cancelled",
        "Cancelled by the account before it started. Nothing was charged.",
        queued_only=True,
    ):
        session.refresh(job)
        return ended(session, [(job_id, account_id)])
    requested = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "running")
        .values(cancel_requested_at=func.coalesce(Job.cancel_requested_at, utcnow()))
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    session.refresh(job)
    if not requested:
        raise JobNotCancellable(f"Job is {job.status}; it has already ended.", status=job.status)
    return Ending()


def end_dead_job(session: Session, job_id: str, *, cancelled: bool, attempts: int) -> Ending:
    """The reconciler's ending for a running job whose worker died: cancelled if the
    account asked for it, else failed after too many lost runs. Nothing is charged (no
    usage was reported back)."""
    if cancelled:
        status, code, message = _CANCELLED_WHILE_RUNNING
    else:
        status, code = "failed", "worker_lost"
        message = f"The job's worker stopped during {attempts} runs. Nothing was charged."
    account_id = _end_uncharged(session, job_id, status, code, message)
    return ended(session, [(job_id, account_id)]) if account_id else Ending()


def sweep_expired_holds(
    session: Session,
    now: datetime,
    hold_ttl: timedelta,
    max_queue_age: timedelta,
) -> Ending:
    """Release the holds of jobs with no live work left, and fail them uncharged.

    Holds do not lapse under live work, so a hold past its `expires_at` expires only for
    a dispatched job that is dead (`_no_live_work`): a running job whose heartbeat
    stopped for a whole `hold_ttl` (`hold_expired`), or a queued one that waited for a
    worker longer than `max_queue_age` (`queue_timeout`, JOB_MAX_QUEUE_SECONDS). A
    queued job that merely waits is not lost (the reconciler re-sends a lost message), and
    a job waiting for a slot is live (its account's earlier jobs run).
    """
    rows = session.execute(
        select(Job.id, Job.account_id, Job.status, Job.dispatched_at, Job.cancel_requested_at)
        .join(CreditReservation, CreditReservation.job_id == Job.id)
        .where(
            CreditReservation.status == "held",
            CreditReservation.expires_at < now,
            holds_slot(),
            _no_live_work(now, hold_ttl, max_queue_age),
        )
        .order_by(CreditReservation.expires_at)
        .limit(500)
        .with_for_update(of=Job, skip_locked=True, key_share=True)
    ).all()
    swept = [
        (row.id, row.account_id)
        for row in rows
        if _end_uncharged(
            session,
            row.id,
            *_sweep_ending(row.status, now, row.dispatched_at, row.cancel_requested_at),
            expired=True,
        )
    ]
    return ended(session, swept, now)


def error_codes(session: Session, job_ids: list[str]) -> dict[str, int]:
    """How many of `job_ids` ended with each error code (the sweep's metric labels)."""
    rows = session.execute(
        select(Job.error_code, func.count())
        .where(Job.id.in_(job_ids), Job.error_code.is_not(None))
        .group_by(Job.error_code)
    ).all()
    return {code: count for code, count in rows if code is not None}


def _no_live_work(
    now: datetime, hold_ttl: timedelta, max_queue_age: timedelta
) -> ColumnElement[bool]:
    """SQL: a running job silent for `hold_ttl`, or a queued one that waited in the broker
    for `max_queue_age` (its reconciler re-sends do not reset the wait)."""
    return or_(
        and_(
            Job.status == "running",
            func.coalesce(Job.heartbeat_at, Job.dispatched_at) < now - hold_ttl,
        ),
        and_(Job.status == "queued", Job.dispatched_at < now - max_queue_age),
    )


# A running job whose cancel its worker never acted on (it died), ended uncharged.
_CANCELLED_WHILE_RUNNING = (
    "cancelled",
    "cancelled",
    "Cancelled by the account while it ran. Nothing was charged.",
)


def _sweep_ending(
    status: str, now: datetime, dispatched_at: datetime, cancel_requested_at: datetime | None
) -> tuple[str, str, str]:
    """The final status, error code and message of a job the sweeper ends."""
    if cancel_requested_at is not None:
        return _CANCELLED_WHILE_RUNNING
    if status == "running":
        return (
            "failed",
            "hold_expired",
            "The job's worker stopped heart-beating and its credit hold expired; "
            "nothing was charged.",
        )
    waited = int((now - as_utc(dispatched_at)).total_seconds() // 60)
    span = f"{waited // 60} hours" if waited >= 120 else f"{waited} minutes"
    return (
        "failed",
        "queue_timeout",
        f"The job waited {span} without a worker; nothing was charged.",
    )


def stale_running(now: datetime, stale_after: timedelta) -> ColumnElement[bool]:
    """SQL: a running job whose worker stopped heart-beating and that was not re-sent
    since (the reconciler's and the start gate's notion of a dead run)."""
    before = now - stale_after
    return and_(
        Job.status == "running",
        or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < before),
        or_(Job.sent_at.is_(None), Job.sent_at < before),
    )
