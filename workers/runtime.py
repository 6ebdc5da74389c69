"""The job runtime every AI task runs on: `JobTask`, the base Celery task class.

It owns the lifecycle around the provider call: mark running (or skip a job that is
already final), call the provider outside any DB transaction, then settle at the
actual cost or release the hold, each in one short transaction. Redelivery is safe
because the settle and release transitions are conditional.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded
from pydantic import BaseModel, ValidationError

from billing.operations import OPERATIONS
from billing.pricing import Usage
from billing.runs import JobRun, complete_job, fail_job, start_job
from models import Base
from models.db import transaction
from workers import provider
from workers.dispatch import enqueue_webhooks
from workers.provider import ProviderError

log = logging.getLogger(__name__)


class OutputError(ProviderError):
    """The provider answered, but not with what the operation asked for."""

    def __init__(self, message: str) -> None:
        super().__init__("invalid_output", message)


@dataclass(frozen=True)
class HandlerResult:
    usage: Usage
    result: dict[str, Any]
    artifacts: list[Base]


class Handler(Protocol):
    def execute(self, run: JobRun) -> HandlerResult: ...


Parser = Callable[[Any, JobRun], tuple[dict[str, Any], list[Base]]]


@dataclass(frozen=True)
class TextHandler:
    """A chat-completion operation: prompt, bounded output, JSON parsed into artifacts."""

    system_prompt: str
    output_model: type[BaseModel]
    parse: Parser

    def messages(self, job_input: dict[str, Any]) -> list[dict[str, str]]:
        return provider.chat_messages(self.system_prompt, job_input)

    def execute(self, run: JobRun) -> HandlerResult:
        answer = provider.chat(
            run.provider_model,
            self.messages(run.input),
            OPERATIONS[run.operation].max_output_tokens(run.input),
        )
        if answer.finish_reason == "length":
            raise OutputError("The model's answer was cut off at the output limit.")
        try:
            output = self.output_model.model_validate(json.loads(answer.text))
        except (json.JSONDecodeError, ValidationError) as exc:
            raise OutputError(f"The model's answer was not the expected JSON: {exc}") from None
        result, artifacts = self.parse(output, run)
        return HandlerResult(Usage(answer.tokens_in, answer.tokens_out), result, artifacts)


class JobTask(Task):  # type: ignore[misc]
    """Base class of every AI task; see the module docstring."""

    abstract = True
    acks_late = True
    reject_on_worker_lost = True
    ignore_result = True
    typing = True

    def run_job(self, job_id: str, handler: Handler) -> str:
        with transaction() as session:
            run = start_job(session, job_id)
        if run is None:
            log.info("job %s: already final or its hold is closed; nothing to do", job_id)
            return "skipped"
        context = f"job={run.job_id} account={run.account_id} op={run.operation}"
        log.info("%s: running on %s (attempt %s)", context, run.model, run.attempts)
        try:
            outcome = handler.execute(run)
        except ProviderError as exc:
            return self._fail(run, exc.code, exc.message, context)
        except SoftTimeLimitExceeded:
            return self._fail(run, "timeout", "The job exceeded its time limit.", context)
        except Exception:
            log.exception("%s: unexpected error", context)
            return self._fail(run, "internal_error", "The job failed unexpectedly.", context)
        with transaction() as session:
            settled = complete_job(session, run, outcome.usage, outcome.result, outcome.artifacts)
        enqueue_webhooks(settled.deliveries)
        log.info("%s: %s", context, "succeeded" if settled else "already settled; result dropped")
        return "succeeded" if settled else "skipped"

    def _fail(self, run: JobRun, code: str, message: str, context: str) -> str:
        with transaction() as session:
            changed = fail_job(session, run.job_id, code, message)
        enqueue_webhooks(changed.deliveries)
        log.warning("%s: failed with %s: %s", context, code, message)
        return "failed" if changed else "skipped"


def artifact_fields(run: JobRun) -> dict[str, Any]:
    return {"account_id": run.account_id, "job_id": run.job_id, "site_id": run.site_id}
