"""The job runtime every AI task runs on: `JobTask`, the base Celery task class.

It owns the lifecycle around the provider call: mark running (or skip a job that is
final, not dispatched, or running with a live worker), call the provider outside any DB
transaction while the process's heartbeat thread keeps the job alive, then end it once:
settle at the usage the provider billed, or release the hold. Redelivery is safe because
the settle and release transitions are conditional.

An answer is never dropped because the database was briefly unavailable: the ending is
retried with backoff for SETTLE_RETRY_SECONDS, and if it still cannot commit the task is
retried through the broker (not acknowledged as done), so the job runs again and the
settle gate keeps the charge single.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded
from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_delay,
    wait_exponential,
    wait_random,
)

import logs
from billing.operations import OPERATIONS
from billing.pricing import Usage, input_token_bound
from billing.runs import Ending, JobRun, Outcome, Refused, finish_run, start_job
from models import Base
from models.db import transaction
from settings import get_settings
from workers import inflight, provider, provider_usage, task_metrics
from workers.dispatch import send_ending
from workers.inflight import Flight, JobCancelled
from workers.provider import ProviderError

log = logging.getLogger(__name__)


class OutputError(ProviderError):
    """The provider answered, but not with what the operation asked for."""

    def __init__(self, message: str) -> None:
        super().__init__("invalid_output", message)


class Handler(Protocol):
    def execute(self, run: JobRun, flight: Flight) -> Outcome: ...


Parser = Callable[[Any, JobRun], tuple[dict[str, Any], list[Base]]]


@dataclass(frozen=True)
class TextHandler:
    """A chat-completion operation: prompt, bounded output, JSON parsed into artifacts.

    Once the provider answered, its usage is billed whatever the answer: cut off at the
    output limit or not the expected JSON, the job fails and pays for the tokens.
    """

    system_prompt: str
    output_model: type[BaseModel]
    parse: Parser

    def messages(self, job_input: dict[str, Any]) -> list[dict[str, str]]:
        return provider.chat_messages(self.system_prompt, job_input)

    def execute(self, run: JobRun, flight: Flight) -> Outcome:
        max_tokens = OPERATIONS[run.operation].max_output_tokens(run.input)
        answer = provider.chat(
            run.provider_model,
            self.messages(run.input),
            max_tokens,
            flight,
            tokens=input_token_bound(run.input) + max_tokens,
        )
        usage = Usage(answer.tokens_in, answer.tokens_out)
        if answer.finish_reason == "length":
            return _billed_failure(usage, "The model's answer was cut off at the output limit.")
        try:
            output = self.output_model.model_validate(json.loads(answer.text))
            result, artifacts = self.parse(output, run)
        except (json.JSONDecodeError, ValidationError) as exc:
            return _billed_failure(usage, f"The model's answer was not the expected JSON: {exc}")
        except OutputError as exc:
            return _billed_failure(usage, exc.message)
        except Exception:
            log.exception("job %s: could not use the provider's answer", run.job_id)
            # Our bug, not the model's: recorded as unbilled usage, not charged.
            error = ("internal_error", "The job failed unexpectedly.")
            return Outcome(usage, error=error, billable=False)
        return Outcome(usage, result, artifacts)


def _billed_failure(usage: Usage, message: str) -> Outcome:
    return Outcome(usage, error=("invalid_output", message))


def is_transient(exc: BaseException) -> bool:
    """A database that is locked, down, restarting or out of pooled connections: worth
    retrying. A value it refuses (DataError, IntegrityError) is not."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, OperationalError | InterfaceError | PoolTimeout)


class JobTask(Task):  # type: ignore[misc]
    """Base class of every AI task; see the module docstring."""

    abstract = True
    acks_late = True
    reject_on_worker_lost = True
    ignore_result = True
    typing = True

    def run_job(self, job_id: str, handler: Handler) -> str:
        settings = get_settings()
        try:
            with transaction() as session:
                run = start_job(
                    session, job_id, stale_after=timedelta(seconds=settings.heartbeat_stale_seconds)
                )
        except SQLAlchemyError as exc:
            if not is_transient(exc):
                raise
            log.warning("job %s: database unavailable at start (%s); retrying", job_id, exc)
            raise self.retry(exc=exc, countdown=5, max_retries=None) from exc
        if run is None:
            log.info("job %s: final, waiting, cancelled or running elsewhere; skipped", job_id)
            return "skipped"
        if isinstance(run, Refused):
            log.info("job %s: its model is no longer allowed on its plan; failed", job_id)
            send_ending(run.ending)
            return "failed"
        logs.bind(account_id=run.account_id, model=run.model)
        started = task_metrics.record_start(run)
        context = f"job={run.job_id} account={run.account_id} op={run.operation}"
        log.info("%s: running on %s (attempt %s)", context, run.model, run.attempts)
        with inflight.flying(run.job_id) as flight:
            outcome = _execute(handler, run, flight, context)
            try:
                ending = _end(run, outcome, settings.settle_retry_seconds, context)
            except SQLAlchemyError as exc:
                # The database could not take the usage either: the log is its only record
                # (the run that follows is charged; this one's provider usage is not).
                usage = outcome.usage
                log.error(
                    "%s: could not record the outcome; the task will run again; this run's "
                    "provider usage is unrecorded: tokens_in=%s tokens_out=%s images=%s",
                    context,
                    usage.tokens_in if usage else 0,
                    usage.tokens_out if usage else 0,
                    usage.images if usage else 0,
                )
                raise self.retry(exc=exc, countdown=30, max_retries=None) from exc
        send_ending(ending)
        if ending.status:
            task_metrics.record_run(run, ending, started)
        status = ending.status or "skipped"
        log.info("%s: %s", context, status)
        return status


def _execute(handler: Handler, run: JobRun, flight: Flight, context: str) -> Outcome:
    try:
        return handler.execute(run, flight)
    except JobCancelled:
        return Outcome()
    except ProviderError as exc:
        return Outcome(error=(exc.code, exc.message))
    except SoftTimeLimitExceeded:  # prefork pool only: the threads pool has no time limits
        return Outcome(error=("timeout", "The job exceeded its time limit."))
    except Exception:
        log.exception("%s: unexpected error", context)
        return Outcome(error=("internal_error", "The job failed unexpectedly."))


def _end(run: JobRun, outcome: Outcome, retry_seconds: float, context: str) -> Ending:
    """End the run, retrying while the database is unavailable. A value the database
    refuses ends the job failed without its result, still paying the billed usage; any
    other error (our bug) ends it failed with the usage unbilled. Either way the job
    ends now: left running, the reconciler would run it, and call the provider, again."""

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning("%s: ending not recorded (attempt %s): %s", context, state.attempt_number, exc)

    retrying = Retrying(
        retry=retry_if_exception(is_transient),
        stop=stop_after_delay(retry_seconds),
        wait=wait_exponential(multiplier=0.5, max=15) + wait_random(0, 1),
        before_sleep=before_sleep,
        reraise=True,
    )
    try:
        return retrying(_finish, run, outcome)
    except SQLAlchemyError as exc:
        if is_transient(exc):
            raise
        log.exception("%s: the database refused the outcome", context)
        error, billable = ("result_rejected", "The result could not be stored."), outcome.billable
    except Exception:
        log.exception("%s: the outcome could not be recorded", context)
        error, billable = ("internal_error", "The job failed unexpectedly."), False
    usage = _recordable(outcome.usage)
    try:
        return retrying(_finish, run, Outcome(usage, error=error, billable=billable))
    except Exception as exc:
        if isinstance(exc, SQLAlchemyError) and is_transient(exc):
            raise
        log.exception(
            "%s: the usage could not be recorded either; the hold is released; this run's "
            "provider usage is unrecorded: %s",
            context,
            usage,
        )
    return retrying(_finish, run, Outcome(error=error))


def _recordable(usage: Usage | None) -> Usage | None:
    """`usage` with any count that is not a whole number >= 0 as 0 and none above
    MAX_INPUT_TOKENS: the failed ending must be able to price and store it."""
    if usage is None:
        return None

    def count(value: object) -> int:
        return min(provider_usage.token_count(value) or 0, provider_usage.MAX_INPUT_TOKENS)

    return Usage(count(usage.tokens_in), count(usage.tokens_out), count(usage.images))


def _finish(run: JobRun, outcome: Outcome) -> Ending:
    with transaction() as session:
        return finish_run(session, run, outcome)


def artifact_fields(run: JobRun) -> dict[str, Any]:
    return {"account_id": run.account_id, "job_id": run.job_id, "site_id": run.site_id}
