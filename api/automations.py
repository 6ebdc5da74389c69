"""Automation runs: estimate, submit (one hold for the whole pipeline), read, list,
cancel. The rules are billing/automation.py's and billing/pipeline.py's."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from flask import Blueprint, request
from pydantic import Field

import logs
import metrics
from api.db import after_commit, db
from api.jobs import IDEMPOTENCY_KEY, SUBMITTED_HEADERS
from api.schemas import AutomationEstimateOut, AutomationOut, AutomationSubmittedOut, Page, responds
from api.security import current_account, require_key, require_role
from api.validation import (
    WEBHOOK_URL,
    PageQuery,
    json_body,
    query_params,
    request_headers,
    webhook_url_policy,
)
from billing import automation
from billing.automation import AutomationOptions
from settings import get_settings
from workers.dispatch import enqueue_dispatches, send_ending

log = logging.getLogger(__name__)
bp = Blueprint("automations", __name__, url_prefix="/v1/automations")


class AutomationBody(AutomationOptions):
    webhook_url: WEBHOOK_URL | None = Field(
        default=None, description="Told when the run ends (signed); else the account's."
    )


def _options(body: AutomationBody) -> dict[str, Any]:
    """The request as sent, bar the webhook URL (billing validates it again)."""
    return body.model_dump(exclude={"webhook_url"}, exclude_unset=True)


@bp.post("/estimate")
@responds(AutomationEstimateOut)
@require_key
@json_body(AutomationOptions)
def estimate(body: AutomationOptions) -> dict[str, Any]:
    """The credits a run would hold now (its worst case), per stage, and if affordable."""
    raw = body.model_dump(exclude_unset=True)
    return automation.estimate_run(db(), current_account(), raw).view()


@bp.post("")
@responds(AutomationSubmittedOut, 202, errors=(409,), headers=SUBMITTED_HEADERS)
@request_headers(IDEMPOTENCY_KEY)
@require_key
@require_role("submit_jobs")
@json_body(AutomationBody)
def submit(body: AutomationBody) -> tuple[dict[str, Any], int, dict[str, str]]:
    """Run the pipeline: its worst case is held, then its first job is queued.

    402 (`required`, `available`) when the hold does not fit; nothing is created."""
    submission = automation.submit_run(
        db(),
        current_account(),
        _options(body),
        hold_ttl=timedelta(seconds=get_settings().hold_ttl_seconds),
        webhook_url=body.webhook_url,
        idempotency_key=request.headers.get("Idempotency-Key"),
        url_policy=webhook_url_policy(),
    )
    run = submission.run
    logs.bind(automation_id=run.id)
    headers = {"Location": f"/v1/automations/{run.id}"}
    if submission.created:
        log.info("automation submitted, %s credits held", run.reserved_credits)
        plan = current_account().plan
        metrics.AUTOMATIONS_SUBMITTED.labels(plan.slug if plan else "none").inc()
        after_commit(lambda: enqueue_dispatches(submission.dispatches))
    else:
        headers["Idempotent-Replayed"] = "true"
    view = {"id": run.id, "status": run.status, "reserved_credits": run.reserved_credits}
    return view, 202, headers


@bp.get("/<id:run_id>")
@responds(AutomationOut)
@require_key
def get_run(run_id: str) -> dict[str, Any]:
    """A run: status, credits held, charged and released, per-stage counts, items made."""
    session = db()
    return automation.run_view(session, automation.get_run(session, current_account().id, run_id))


@bp.get("")
@responds(Page[AutomationOut])
@require_key
@query_params(PageQuery)
def list_runs(query: PageQuery) -> dict[str, Any]:
    """Your runs, newest first (without their item ids: see each run)."""
    session = db()
    page = automation.list_runs(
        session, current_account().id, cursor=query.cursor, limit=query.limit
    )
    return page.body(lambda run: automation.run_view(session, run, items=False))


@bp.post("/<id:run_id>/cancel")
@responds(AutomationOut, errors=(409,))
@require_key
@require_role("submit_jobs")
def cancel(run_id: str) -> dict[str, Any]:
    """Cancel a run: queued jobs at once, running ones at their next safe point; the
    rest of the hold is released when the last job ends. 409 once it has ended."""
    session = db()
    account_id = current_account().id
    ending = automation.cancel_run(session, account_id, run_id)
    after_commit(lambda: send_ending(ending))
    return automation.run_view(session, automation.get_run(session, account_id, run_id))
