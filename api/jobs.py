"""Jobs: submit (hold credits, enqueue after commit), read, list, cancel."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from flask import Blueprint, Response, request
from pydantic import BaseModel, ConfigDict, Field

import logs
import metrics
from api.db import after_commit, db
from api.errors import error_response
from api.security import current_account, policy_seen, require_key, require_role
from api.validation import json_body, query_int, webhook_url_policy
from billing import job_views, runs
from billing.admission import Dispatch
from billing.submission import JobRequest, estimate_job, submit_job
from models.db import transaction
from settings import get_settings
from workers.dispatch import enqueue_dispatches, enqueue_job, send_ending

log = logging.getLogger(__name__)
bp = Blueprint("jobs", __name__, url_prefix="/v1/jobs")


class EstimateBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    operation: str
    input: dict[str, Any]
    site_id: str | None = Field(default=None, max_length=40)
    model: str | None = Field(default=None, max_length=100)


class SubmitBody(EstimateBody):
    webhook_url: str | None = Field(default=None, max_length=2000)


@bp.post("")
@require_key
@require_role("submit_jobs")
@json_body(SubmitBody)
def submit(body: SubmitBody) -> tuple[dict[str, Any], int, dict[str, str]]:
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
    hold is undone (503); other admitted jobs are re-sent by the reconciler."""
    enqueue_dispatches(d for d in dispatches if d.job_id != job_id)
    if not any(d.job_id == job_id for d in dispatches):
        return None
    try:
        enqueue_job(job_id, next(d.operation for d in dispatches if d.job_id == job_id))
    except Exception:
        log.exception("could not enqueue job %s", job_id)
        with transaction() as session:
            ending = runs.fail_job(
                session, job_id, "broker_unavailable", "The job could not be queued."
            )
        # Its webhook is sent by the periodic requeue once the broker is back.
        send_ending(ending)
        return error_response(
            503,
            "broker_unavailable",
            "The job queue is unavailable; nothing was charged.",
            job_id=job_id,
        )
    return None


@bp.get("/<job_id>")
@require_key
def get_job(job_id: str) -> dict[str, Any]:
    return job_views.job_view(job_views.get_job(db(), current_account().id, job_id))


@bp.get("")
@require_key
def list_jobs() -> dict[str, Any]:
    page = job_views.list_jobs(
        db(),
        current_account().id,
        status=request.args.get("status"),
        operation=request.args.get("operation"),
        cursor=request.args.get("cursor"),
        limit=query_int("limit", 20),
    )
    return page.body(job_views.job_view)


@bp.post("/<job_id>/cancel")
@require_key
@require_role("submit_jobs")
def cancel(job_id: str) -> dict[str, Any]:
    """Queued: cancelled now. Running: cancelled at the worker's next safe point
    (`cancel_requested_at` is set meanwhile); charged as README "What is charged" says."""
    ending = runs.cancel_job(db(), current_account().id, job_id)
    after_commit(lambda: send_ending(ending))
    return job_views.job_view(job_views.get_job(db(), current_account().id, job_id))
