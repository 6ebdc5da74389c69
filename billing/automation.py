"""Automation runs: submit (estimate the whole pipeline's worst case and hold it once),
read, list and cancel. The run's progress is billing/pipeline.py's."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from billing import budgets, ledger, pipeline
from billing.admission import Dispatch, admit
from billing.errors import AutomationNotCancellable, IdempotencyConflict, InvalidInput, NotFound
from billing.operations import KeywordId, get_operation, validate_input, validation_details
from billing.paging import Page, newest_first, page_of, page_size, time_cursor
from billing.policy import resolve_model
from billing.runs import Ending, cancel_job
from billing.sites import get_site
from billing.submission import check_idempotency_key
from billing.text import ShortText
from billing.webhook_urls import STRICT_URLS, UrlPolicy
from models import (
    FINAL_JOB_STATUSES,
    FINAL_RUN_STATUSES,
    Account,
    AutomationRun,
    Job,
    as_utc,
    new_id,
    utcnow,
)

MAX_KEYWORDS = 100
Stage = Literal[pipeline.STAGES]  # type: ignore[valid-type]


def _model_choice(kind: str) -> Any:
    return Field(default=None, max_length=100, json_schema_extra={"x-choices": kind})


class StageModels(BaseModel):
    """The model of a stage's jobs; the API publishes the active models' names."""

    model_config = ConfigDict(extra="forbid", strict=True)

    clustering: str | None = _model_choice("text_models")
    idea_generation: str | None = _model_choice("text_models")
    content_generation: str | None = _model_choice("text_models")
    image_prompt_extraction: str | None = _model_choice("text_models")
    image_generation: str | None = _model_choice("image_models")


class StageOptions(BaseModel):
    """How much each stage makes, and on which models: every count bounded, so the
    whole run has a worst case to hold."""

    model_config = ConfigDict(extra="forbid", strict=True)

    max_clusters: int | None = Field(
        default=None, ge=1, le=MAX_KEYWORDS, description="Default: one per keyword."
    )
    ideas_per_cluster: int = Field(default=1, ge=1, le=10)
    word_count: int = Field(default=800, ge=100, le=5000)
    prompts_per_article: int = Field(default=1, ge=1, le=5)
    images_per_prompt: int = Field(default=1, ge=1, le=4)
    models: StageModels = Field(
        default_factory=lambda: StageModels(),
        description="A model per stage, within the plan's policy (default: as for a job).",
    )


class AutomationOptions(BaseModel):
    """A run's request (bar `webhook_url`, which the API checks). Keywords as text, ids
    of saved keywords, or both; a list that is sent is not empty; at most MAX_KEYWORDS
    are used (the first, text before ids)."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"anyOf": [{"required": ["keywords"]}, {"required": ["keyword_ids"]}]},
    )

    site_id: str | None = Field(default=None, max_length=40)
    keywords: list[ShortText] = Field(
        default_factory=list, max_length=MAX_KEYWORDS, json_schema_extra={"minItems": 1}
    )
    keyword_ids: list[KeywordId] = Field(
        default_factory=list, max_length=MAX_KEYWORDS, json_schema_extra={"minItems": 1}
    )
    stages: list[Stage] = Field(
        default_factory=lambda: list(pipeline.STAGES),
        min_length=1,
        max_length=len(pipeline.STAGES),
        description="The operations to run: the pipeline from clustering up to the last one.",
        json_schema_extra={
            "enum": [list(pipeline.STAGES[:n]) for n in range(1, len(pipeline.STAGES) + 1)]
        },
    )
    options: StageOptions = Field(default_factory=StageOptions)

    @model_validator(mode="before")
    @classmethod
    def _keywords_sent(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        for name in ("keywords", "keyword_ids"):
            if raw.get(name) == []:
                raise ValueError(f"'{name}' is empty: leave it out, or send at least one")
        if "keywords" not in raw and "keyword_ids" not in raw:
            raise ValueError("a run needs keywords: 'keywords', 'keyword_ids' or both")
        return raw

    @model_validator(mode="after")
    def _pipeline_prefix(self) -> AutomationOptions:
        if tuple(self.stages) != pipeline.STAGES[: len(self.stages)]:
            raise ValueError(
                "'stages' must be the pipeline in order from clustering: "
                + ", ".join(pipeline.STAGES)
            )
        return self


def parse_options(raw: dict[str, Any]) -> AutomationOptions:
    try:
        return AutomationOptions.model_validate(raw)
    except ValidationError as exc:
        fields = validation_details(exc)
        first = next(iter(fields.items()))
        raise InvalidInput(f"Invalid automation: {first[0]}: {first[1]}.", fields=fields) from None


@dataclass(frozen=True)
class RunPlan:
    """The run's worst case: per stage its model, most jobs and most credits a job."""

    keywords: list[str]
    options: dict[str, Any]
    stages: dict[str, dict[str, Any]]
    clustering_input: dict[str, Any]

    @property
    def holds(self) -> dict[str, int]:
        """The worst case per operation, as the spending budgets count it."""
        return {name: stage["jobs"] * stage["hold"] for name, stage in self.stages.items()}

    @property
    def credits(self) -> int:
        return sum(self.holds.values())


def plan_run(session: Session, account: Account, request: AutomationOptions) -> RunPlan:
    """Price the whole run. Both the estimate and the submission call this, so the
    estimate is the hold, to the credit."""
    if request.site_id is not None:
        get_site(session, account.id, request.site_id)
    clustering = get_operation("clustering")
    raw: dict[str, Any] = {"keywords": request.keywords} if request.keywords else {}
    if request.keyword_ids:
        raw["keyword_ids"] = request.keyword_ids
    job_input = clustering.expand_input(
        session, account.id, request.site_id, validate_input(clustering, raw)
    )
    keywords = list(job_input["keywords"])[:MAX_KEYWORDS]
    job_input["keywords"] = keywords
    asked = request.options
    options = asked.model_dump(exclude={"models", "max_clusters"})
    options["max_clusters"] = min(asked.max_clusters or len(keywords), len(keywords))
    stages: dict[str, dict[str, Any]] = {}
    jobs = 1
    for stage in request.stages:
        operation = get_operation(stage)
        model = resolve_model(session, account, operation, getattr(asked.models, stage))
        worst_case = stage != "clustering"  # the one input known now is the first
        if worst_case:
            stage_input = pipeline.worst_input(stage, keywords, options)
            jobs *= pipeline.fan_out(options)[pipeline.STAGES[pipeline.STAGES.index(stage) - 1]]
        else:
            stage_input = job_input
        hold = operation.hold(model, stage_input, worst_case=worst_case)
        stages[stage] = {"model": model.name, "jobs": jobs, "hold": hold}
    for stage in pipeline.STAGES[len(request.stages) :]:  # a model named is checked anyway
        if getattr(asked.models, stage) is not None:
            resolve_model(session, account, get_operation(stage), getattr(asked.models, stage))
    return RunPlan(keywords, options, stages, job_input)


@dataclass(frozen=True)
class RunEstimate:
    plan: RunPlan
    available: int
    can_spend: bool
    within_budget: bool

    def view(self) -> dict[str, Any]:
        credits = self.plan.credits
        return {
            "credits": credits,
            "available": self.available,
            "affordable": self.can_spend and self.within_budget and credits <= self.available,
            "within_budget": self.within_budget,
            "stages": {
                name: {"model": s["model"], "max_jobs": s["jobs"], "credits_per_job": s["hold"]}
                for name, s in self.plan.stages.items()
            },
        }


def estimate_run(session: Session, account: Account, raw: dict[str, Any]) -> RunEstimate:
    """What a submission would hold now; writes nothing."""
    plan = plan_run(session, account, parse_options(raw))
    return RunEstimate(
        plan,
        account.available_credits,
        account.status in ledger.SPENDING_STATUSES,
        within_budget=budgets.exceeded(session, account, plan.holds) is None,
    )


@dataclass(frozen=True)
class RunSubmission:
    run: AutomationRun
    created: bool
    dispatches: list[Dispatch] = field(default_factory=list)


def _fingerprint(raw: dict[str, Any], webhook_url: str | None) -> str:
    body = {"request": raw, "webhook_url": webhook_url}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def submit_run(
    session: Session,
    account: Account,
    raw: dict[str, Any],
    *,
    hold_ttl: timedelta,
    webhook_url: str | None = None,
    idempotency_key: str | None = None,
    url_policy: UrlPolicy = STRICT_URLS,
) -> RunSubmission:
    """Hold the run's worst case, write the run and its clustering job (its hold carved
    from the run's) and admit it; all in the caller's transaction, or 402 and nothing."""
    request = parse_options(raw)
    fingerprint = _fingerprint(raw, webhook_url)
    if idempotency_key is not None:
        check_idempotency_key(idempotency_key)
        existing = _run_for_key(session, account.id, idempotency_key)
        if existing is not None:
            return RunSubmission(_same_request(existing, fingerprint), created=False)
    if webhook_url is not None:
        url_policy.check(webhook_url, must_resolve=False)
    plan = plan_run(session, account, request)
    budgets.check(session, account, plan.holds)  # locks the account first, as a job's does
    run = AutomationRun(
        id=new_id("auto"),
        account_id=account.id,
        site_id=request.site_id,
        status="queued",
        keywords=plan.keywords,
        stages=list(plan.stages),
        options=plan.options,
        plan=plan.stages,
        reserved_credits=plan.credits,
        hold_ttl_seconds=int(hold_ttl.total_seconds()),
        webhook_url=webhook_url,
        idempotency_key=idempotency_key,
        request_hash=fingerprint,
    )
    try:
        with session.begin_nested():
            session.add(run)
            session.flush()
    except IntegrityError:
        existing = _run_for_key(session, account.id, idempotency_key or "")
        if existing is None:
            raise
        return RunSubmission(_same_request(existing, fingerprint), created=False)
    ledger.reserve_run(session, account.id, run.id, plan.credits)
    first = plan.stages["clustering"]
    job = pipeline.run_job(run, "clustering", first["model"], plan.clustering_input, first["hold"])
    if not pipeline.add_run_job(session, run, job):
        raise RuntimeError("a new run's pool cannot hold its first job")
    session.refresh(run)
    return RunSubmission(run, created=True, dispatches=admit(session, account.id, utcnow()))


def _run_for_key(session: Session, account_id: str, key: str) -> AutomationRun | None:
    return session.scalar(
        select(AutomationRun).where(
            AutomationRun.account_id == account_id, AutomationRun.idempotency_key == key
        )
    )


def _same_request(existing: AutomationRun, fingerprint: str) -> AutomationRun:
    if existing.request_hash != fingerprint:
        raise IdempotencyConflict(
            "This Idempotency-Key was already used with a different request body.",
            automation_id=existing.id,
        )
    return existing


def get_run(session: Session, account_id: str, run_id: str) -> AutomationRun:
    run = session.scalar(
        select(AutomationRun).where(
            AutomationRun.id == run_id, AutomationRun.account_id == account_id
        )
    )
    if run is None:
        raise NotFound("Automation run not found.")
    return run


def list_runs(
    session: Session, account_id: str, *, cursor: str | None = None, limit: int = 20
) -> Page[AutomationRun]:
    """Newest first."""
    limit = page_size(limit)
    query = select(AutomationRun).where(AutomationRun.account_id == account_id)
    rows = session.scalars(newest_first(query, AutomationRun, cursor, limit)).all()
    return page_of(rows, limit, time_cursor)


def cancel_run(session: Session, account_id: str, run_id: str) -> Ending:
    """Stop a run: no new jobs, its queued jobs cancelled, its running ones asked to
    stop (they end as a job's cancel says); the pool is released when the last ends.
    409 once it has ended."""
    run = get_run(session, account_id, run_id)
    if run.status in FINAL_RUN_STATUSES:
        raise AutomationNotCancellable(
            f"Automation run is {run.status}; it has already ended.", status=run.status
        )
    return _stop(session, run)


def _stop(session: Session, run: AutomationRun) -> Ending:
    """Flag the run and cancel its open jobs (each one ending, as `cancel_job`).

    Locks: the account first, then the run, then only jobs nobody holds (SKIP LOCKED):
    an ending holds its job and waits for the account, so this never waits on it; a
    job skipped here is ending now, and makes no children once the flag is committed.
    """
    session.execute(
        select(Account.id).where(Account.id == run.account_id).with_for_update(key_share=True)
    )
    flagged = session.execute(
        update(AutomationRun)
        .where(
            AutomationRun.id == run.id,
            AutomationRun.cancel_requested_at.is_(None),
            AutomationRun.status.not_in(FINAL_RUN_STATUSES),
        )
        .values(cancel_requested_at=utcnow())
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    if not flagged:
        # Ended since the caller read it (its last job's ending won the race): a 409, as
        # for any ended run, not a cancel flag on a finished run.
        status = session.scalar(select(AutomationRun.status).where(AutomationRun.id == run.id))
        if status in FINAL_RUN_STATUSES:
            raise AutomationNotCancellable(
                f"Automation run is {status}; it has already ended.", status=status
            )
    open_jobs = session.scalars(
        select(Job.id)
        .where(Job.automation_id == run.id, Job.status.not_in(FINAL_JOB_STATUSES))
        .with_for_update(skip_locked=True)
    ).all()
    total = Ending()
    for job_id in open_jobs:
        total = _merged(total, cancel_job(session, run.account_id, job_id))
    locked = session.scalar(
        select(AutomationRun)
        .where(AutomationRun.id == run.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    assert locked is not None
    delivery = pipeline.finish_if_done(session, locked, utcnow())
    return _merged(total, Ending(deliveries=[delivery] if delivery else []))


def _merged(first: Ending, second: Ending) -> Ending:
    return Ending(
        first.job_ids + second.job_ids,
        first.deliveries + second.deliveries,
        first.dispatches + second.dispatches,
    )


def sweep_cancelled_runs(session: Session, limit: int = 50) -> Ending:
    """The reconciler's: finish the cancels of runs that still have open jobs (a child
    made by an ending that raced the cancel, a job skipped while locked)."""
    runs = session.scalars(
        select(AutomationRun)
        .where(
            AutomationRun.cancel_requested_at.is_not(None),
            AutomationRun.status.not_in(FINAL_RUN_STATUSES),
        )
        .limit(limit)
    ).all()
    total = Ending()
    for run in runs:
        total = _merged(total, _stop(session, run))
    return total


STAGE_COUNTS = ("queued", "running", "succeeded", "failed", "cancelled")


def run_view(session: Session, run: AutomationRun, *, items: bool = True) -> dict[str, Any]:
    """The run as the API shows it: status, money, per-stage counts and made items."""
    totals = pipeline.run_totals(session, run)
    counts = session.execute(
        select(Job.operation, Job.status, func.count())
        .where(Job.automation_id == run.id)
        .group_by(Job.operation, Job.status)
    ).all()
    stages: dict[str, dict[str, int]] = {
        stage: {"total": 0, **dict.fromkeys(STAGE_COUNTS, 0)} for stage in run.stages
    }
    for operation, status, count in counts:
        stage = stages.setdefault(operation, {"total": 0, **dict.fromkeys(STAGE_COUNTS, 0)})
        stage[status] += count
        stage["total"] += count
    status = run.status
    started = any(s["running"] or s["total"] > s["queued"] for s in stages.values())
    if status == "queued" and started:
        status = "running"
    view = {
        **totals,
        "status": status,
        "site_id": run.site_id,
        "keywords": run.keywords,
        "options": run.options,
        "stages": stages,
        "skipped_children": run.skipped_children,
        "webhook_url": run.webhook_url,
        "created_at": _iso(run.created_at),
        "cancel_requested_at": _iso(run.cancel_requested_at),
        "jobs_url": f"/v1/jobs?automation_id={run.id}",
    }
    if items:
        view["items"] = {
            get_operation(stage).artifact_label: list(
                session.scalars(
                    select(artifact.id)
                    .join(Job, Job.id == artifact.job_id)
                    .where(Job.automation_id == run.id)
                    .order_by(artifact.id)
                    .limit(1000)
                )
            )
            for stage, artifact in pipeline.ARTIFACTS.items()
            if stage in run.stages
        }
    return view


def _iso(value: datetime | None) -> str | None:
    return as_utc(value).isoformat() if value else None
