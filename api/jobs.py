"""Jobs: submit (hold credits, enqueue after commit), read, list, cancel."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

from flask import Blueprint, Response, request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import SQLAlchemyError

import logs
import metrics
from api.db import after_commit, db
from api.errors import error_response
from api.schemas import EstimateOut, JobOut, Page, responds
from api.security import current_account, policy_seen, require_key, require_role
from api.validation import (
    WEBHOOK_URL,
    PageQuery,
    json_body,
    query_params,
    request_headers,
    webhook_url_policy,
)
from billing import job_views, runs
from billing.admission import Dispatch
from billing.operations import OPERATIONS
from billing.submission import JobRequest, estimate_job, submit_job
from models import JOB_STATUSES
from models.db import transaction
from settings import get_settings
from workers.dispatch import enqueue_dispatches, enqueue_job, send_ending

log = logging.getLogger(__name__)
bp = Blueprint("jobs", __name__, url_prefix="/v1/jobs")


if TYPE_CHECKING:
    from api.openapi import DocumentBuilder


class EstimateBody(BaseModel):
    """`input` is validated by the operation's own model (billing/operations.py)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    operation: str
    input: dict[str, Any]
    site_id: str | None = Field(default=None, max_length=40)
    model: str | None = Field(default=None, max_length=100)

    @classmethod
    def openapi_schema(cls, builder: DocumentBuilder) -> dict[str, Any]:
        """One variant per operation, told apart by `operation` (built from the same
        input models the submission validates with)."""
        return builder.per_operation(cls)


class SubmitBody(EstimateBody):
    webhook_url: WEBHOOK_URL | None = Field(
        default=None, description="Told when the job ends (signed); else the account's."
    )


IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "The same key returns the first job (`Idempotent-Replayed: true`); "
    "with another body it is a 409. Kept as long as the job.",
    "schema": {
        "type": "string",
        "minLength": 1,
        "maxLength": 255,
        "pattern": r"^[!-~]([ -~]*[!-~])?$",
    },
}
REPLAYED_HEADER = {
    "description": "`true` when an earlier request with this key is answered.",
    "schema": {"type": "string", "enum": ["true"]},
}
SUBMITTED_HEADERS = {
    "Location": {"description": "The job's URL.", "schema": {"type": "string"}, "required": True},
    "Idempotent-Replayed": REPLAYED_HEADER,
}


@bp.post("")
@responds(JobOut, 202, errors=(409,), headers=SUBMITTED_HEADERS)
@request_headers(IDEMPOTENCY_KEY)
@require_key
@require_role("submit_jobs")
@json_body(SubmitBody)
def submit(body: SubmitBody) -> tuple[dict[str, Any], int, dict[str, str]]:
    """Submit a job: its worst-case cost is held, then it is queued.

    402 when the hold does not fit the credits available or a budget."""
    account = current_account()
    submission = submit_job(
        db(),
        account,
        JobRequest(
            operation=body.operation,
            input=body.input,
            site_id=body.site_id,
            model=body.model,
            webhook_url=body.webhook_url,
            idempotency_key=request.headers.get("Idempotency-Key"),
        ),
        hold_ttl=_hold_ttl(),
        url_policy=webhook_url_policy(),
        seen=policy_seen(),
    )
    job = submission.job
    logs.bind(job_id=job.id, operation=job.operation, model=job.model)
    if submission.created:
        log.info("job submitted, %s credits held", job.reserved_credits)
        plan = account.plan.slug if account.plan else "none"
        metrics.JOBS_SUBMITTED.labels(job.operation, plan).inc()
        after_commit(lambda: _enqueue(job.id, submission.dispatches))
    headers = {"Location": f"/v1/jobs/{job.id}"}
    if not submission.created:
        headers["Idempotent-Replayed"] = "true"
    return job_views.job_view(job), 202, headers


@bp.post("/estimate")
@responds(EstimateOut)
@require_key
@json_body(EstimateBody)
def estimate(body: EstimateBody) -> dict[str, Any]:
    """The model and the credits a submission would hold now, and if it is affordable."""
    request_ = JobRequest(
        operation=body.operation, input=body.input, site_id=body.site_id, model=body.model
    )
    return estimate_job(db(), current_account(), request_, policy_seen()).view()


def _hold_ttl() -> timedelta:
    return timedelta(seconds=get_settings().hold_ttl_seconds)


def _enqueue(job_id: str, dispatches: list[Dispatch]) -> Response | None:
    """After commit: send the jobs that took a slot (usually this one; none when the
    account's slots are full and it waits, queued). If the broker is down, this job's
    hold is undone (503); other admitted jobs are re-sent by the reconciler. If the
    database cannot undo it either (the host lost its network), the job stays committed
    and dispatched, the reconciler sends it once the broker is back, and the answer is
    the 202: a 503 would be untrue and a 500 would have the client submit it again."""
    enqueue_dispatches(d for d in dispatches if d.job_id != job_id)
    if not any(d.job_id == job_id for d in dispatches):
        return None
    try:
        enqueue_job(job_id, next(d.operation for d in dispatches if d.job_id == job_id))
    except Exception:
        log.exception("could not enqueue job %s", job_id)
        try:
            with transaction() as session:
                ending = runs.fail_unqueued(session, job_id)
        except SQLAlchemyError:
            log.exception(
                "could not fail job %s either: it stays queued for the reconciler", job_id
            )
            return None
        # Its webhook is sent by the periodic requeue once the broker is back.
        send_ending(ending)
        return error_response(
            503,
            "broker_unavailable",
            "The job queue is unavailable; nothing was charged.",
            job_id=job_id,
        )
    return None


@bp.get("/<id:job_id>")
@responds(JobOut)
@require_key
def get_job(job_id: str) -> dict[str, Any]:
    """A job: its status, the credits held and charged, its result or error."""
    return job_views.job_view(job_views.get_job(db(), current_account().id, job_id))


class JobsQuery(PageQuery):
    status: Literal[JOB_STATUSES] | None = None  # type: ignore[valid-type]
    operation: Literal[tuple(OPERATIONS)] | None = None  # type: ignore[valid-type]
    automation_id: str | None = Field(default=None, max_length=40)


@bp.get("")
@responds(Page[JobOut])
@require_key
@query_params(JobsQuery)
def list_jobs(query: JobsQuery) -> dict[str, Any]:
    """Your jobs, newest first; filter by `status` and `operation`."""
    page = job_views.list_jobs(
        db(),
        current_account().id,
        status=query.status,
        operation=query.operation,
        automation_id=query.automation_id,
        cursor=query.cursor,
        limit=query.limit,
    )
    return page.body(job_views.job_view)


@bp.post("/<id:job_id>/cancel")
@responds(JobOut, errors=(409,))
@require_key
@require_role("submit_jobs")
def cancel(job_id: str) -> dict[str, Any]:
    """Cancel a job: queued, at once; running, at the worker's next safe point.

    `cancel_requested_at` is set meanwhile; charged as README "What is charged" says. 409
    once it has ended."""
    ending = runs.cancel_job(db(), current_account().id, job_id)
    after_commit(lambda: send_ending(ending))
    return job_views.job_view(job_views.get_job(db(), current_account().id, job_id))
