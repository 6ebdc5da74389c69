"""The automation pipeline's stages, and a run's progress driven by its jobs' endings.

keywords -> clustering -> idea_generation (per cluster) -> content_generation (per idea)
-> image_prompt_extraction (per article) -> image_generation (per prompt).

Fan-out is database-driven, not a Celery chord: `continue_runs` runs inside the
transaction that ends a job (billing/runs.py `ended`), so the children of a job exist
exactly when its ending commits. A redelivered task finds the job final and ends
nothing; the unique (parent_job_id, child_index) index refuses a second child anyway.
No result backend, no chord counter to lose: the run's state is its rows.

Money: a child's hold is carved from the run's pool (ledger.carve), never reserved
again from the balance. Each child's input is cut to the bounds `worst_input` prices, so
its hold never exceeds the per-job figure the run held for its stage.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from billing import ledger, policy
from billing.errors import InvalidInput
from billing.operations import get_operation, validate_input
from billing.webhooks import queue_automation_event
from models import (
    CATALOG_VERSION,
    FINAL_JOB_STATUSES,
    FINAL_RUN_STATUSES,
    Account,
    AIModelConfig,
    AutomationRun,
    Base,
    Cluster,
    Content,
    CreditReservation,
    Idea,
    Image,
    ImagePrompt,
    Job,
    Plan,
    as_utc,
    new_id,
)

STAGES = (
    "clustering",
    "idea_generation",
    "content_generation",
    "image_prompt_extraction",
    "image_generation",
)
# What each stage stores (its children's inputs), in pipeline order.
ARTIFACTS: dict[str, type[Cluster | Idea | Content | ImagePrompt | Image]] = {
    "clustering": Cluster,
    "idea_generation": Idea,
    "content_generation": Content,
    "image_prompt_extraction": ImagePrompt,
    "image_generation": Image,
}
# The most characters of a parent's text a child's input carries (the hold prices these).
CLUSTER_NAME_CHARS = 100
TITLE_CHARS = 200
EXCERPT_CHARS = 2000
PROMPT_CHARS = 4000
# The character that costs most in a hold: JSON escapes it to 6 bytes (`\u0001`), the
# most any character takes, and it counts 2 dense tokens, the most any character counts.
_COSTLIEST = "\x01"


def _dedupe(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def child_input(
    stage: str, item: Base, parent_input: dict[str, Any], run: AutomationRun
) -> dict[str, Any]:
    """The input of `stage`'s job made from `item` (its parent's artifact), cut to the
    bounds `worst_input` prices."""
    options = run.options
    if isinstance(item, Cluster):
        asked = set(run.keywords)
        keywords = _dedupe([k for k in item.keywords if k in asked])[:200]
        return {
            "cluster": {"name": item.name[:CLUSTER_NAME_CHARS], "keywords": keywords},
            "count": options["ideas_per_cluster"],
        }
    if isinstance(item, Idea):
        return {
            "title": item.title[:TITLE_CHARS],
            "word_count": options["word_count"],
            "keywords": parent_input["cluster"]["keywords"][:50],
        }
    if isinstance(item, Content):
        return {"text": item.body[:EXCERPT_CHARS], "count": options["prompts_per_article"]}
    if isinstance(item, ImagePrompt):
        return {"prompt": item.prompt[:PROMPT_CHARS], "count": options["images_per_prompt"]}
    raise ValueError(f"{stage} has no input made from {type(item).__name__}")


def worst_input(stage: str, keywords: list[str], options: dict[str, Any]) -> dict[str, Any]:
    """The costliest input `child_input` can make for `stage`: every cut text at its
    bound in the costliest character, every keyword list a superset of the real one."""
    worst = _COSTLIEST
    if stage == "idea_generation":
        return {
            "cluster": {"name": worst * CLUSTER_NAME_CHARS, "keywords": keywords},
            "count": options["ideas_per_cluster"],
        }
    if stage == "content_generation":
        return {
            "title": worst * TITLE_CHARS,
            "word_count": options["word_count"],
            "keywords": keywords,
        }
    if stage == "image_prompt_extraction":
        return {"text": worst * EXCERPT_CHARS, "count": options["prompts_per_article"]}
    if stage == "image_generation":
        return {"prompt": worst, "count": options["images_per_prompt"]}
    raise ValueError(f"{stage} is not made from a parent's output")


def fan_out(options: dict[str, Any]) -> dict[str, int]:
    """The most children one job of each stage makes (its outputs used, in id order)."""
    return {
        "clustering": options["max_clusters"],
        "idea_generation": options["ideas_per_cluster"],
        "content_generation": 1,
        "image_prompt_extraction": options["prompts_per_article"],
        "image_generation": 0,
    }


def continue_runs(session: Session, job_ids: list[str], now: datetime) -> list[str]:
    """After `job_ids` ended (same transaction): make the children of each that
    succeeded, then end every run of theirs whose last job this was. The webhook
    deliveries queued. Lock order: the caller locked the jobs, holds and account; the
    run row comes last."""
    deliveries: list[str] = []
    rows = session.execute(
        select(Job.id, Job.automation_id).where(Job.id.in_(job_ids), Job.automation_id.is_not(None))
    ).all()
    by_run: dict[str, list[str]] = {}
    for job_id, run_id in rows:
        by_run.setdefault(str(run_id), []).append(job_id)
    for run_id, ended_ids in by_run.items():
        run = session.scalar(
            select(AutomationRun)
            .where(AutomationRun.id == run_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        if run is None or run.status in FINAL_RUN_STATUSES:
            continue  # a job tagged without a run (analytics), or a late answer
        if run.cancel_requested_at is None:
            for job_id in ended_ids:
                _make_children(session, run, job_id)
        delivery = finish_if_done(session, run, now)
        if delivery:
            deliveries.append(delivery)
    return deliveries


def _make_children(session: Session, run: AutomationRun, job_id: str) -> None:
    parent = session.get(Job, job_id, populate_existing=True)
    assert parent is not None
    if parent.status != "succeeded" or parent.operation not in run.stages:
        return  # a failed job ends its branch: no children, nothing charged for them
    position = run.stages.index(parent.operation)
    if position + 1 == len(run.stages):
        return
    stage = run.stages[position + 1]
    artifact = ARTIFACTS[parent.operation]
    items = session.scalars(
        select(artifact).where(artifact.job_id == parent.id).order_by(artifact.id)
    ).all()
    # Outputs beyond the bound the run was priced for are not used (asked for, not a
    # failure); an output that cannot make a child is one (`skipped_children`), and so is
    # every child of a stage whose model the account's plan no longer allows (nothing is
    # carved for them: the pool keeps their share until the run ends).
    items = items[: fan_out(run.options)[parent.operation]]
    if not _model_still_allowed(session, run, stage):
        run.skipped_children += len(items)
        return
    skipped = 0
    for index, item in enumerate(items):
        if not _make_child(session, run, parent, stage, index, item):
            skipped += 1
    if skipped:
        run.skipped_children += skipped


def _model_still_allowed(session: Session, run: AutomationRun, stage: str) -> bool:
    """Whether the model the run was priced with for `stage` may still run on the
    account's plan (it may have been downgraded, the model switched off, since)."""
    plan, catalog_version = session.execute(
        select(Plan, CATALOG_VERSION)
        .select_from(Account)
        .outerjoin(Plan, Plan.id == Account.plan_id)
        .where(Account.id == run.account_id)
    ).one()
    model = run.plan[stage]["model"]
    return policy.may_run(session, plan, get_operation(stage), model, catalog_version)


def _make_child(
    session: Session, run: AutomationRun, parent: Job, stage: str, index: int, item: Base
) -> bool:
    """One child job, its hold carved from the run's pool; False (nothing written) if
    its input is unusable (or could need a longer answer than its model writes) or would
    hold more than its stage was priced at."""
    operation = get_operation(stage)
    planned = run.plan[stage]
    model = session.get(AIModelConfig, planned["model"])
    if model is None:
        return False
    try:
        job_input = validate_input(operation, child_input(stage, item, dict(parent.input), run))
        hold = operation.hold(model, job_input)  # refused over the model's output cap
    except InvalidInput:
        return False
    if hold > planned["hold"]:
        return False
    job = run_job(run, stage, model.name, job_input, hold)
    job.parent_job_id, job.child_index = parent.id, index
    job.source_item_id = getattr(item, "id", None)
    with session.begin_nested() as savepoint:
        if add_run_job(session, run, job):
            return True
        savepoint.rollback()
    return False


def run_job(
    run: AutomationRun, stage: str, model: str, job_input: dict[str, Any], hold: int
) -> Job:
    """A job of the run (not yet added): an ordinary job, tagged with its run."""
    return Job(
        id=new_id("job"),
        account_id=run.account_id,
        site_id=run.site_id,
        operation=stage,
        input=job_input,
        model=model,
        status="queued",
        reserved_credits=hold,
        automation_id=run.id,
    )


def add_run_job(session: Session, run: AutomationRun, job: Job) -> bool:
    """Write the job and carve its hold from the run's pool; False if the pool is short
    (the caller rolls the job back)."""
    session.add(job)
    session.flush()
    ttl = timedelta(seconds=run.hold_ttl_seconds)
    return ledger.carve(session, run.id, run.account_id, job.id, job.reserved_credits, ttl)


def final_status(session: Session, run: AutomationRun) -> str:
    """Cancelled if asked; failed if no branch reached the last stage; partial if any
    job failed or was cancelled, or a child could not be made."""
    if run.cancel_requested_at is not None:
        return "cancelled"
    counts = dict(
        session.execute(
            select(Job.status, func.count())
            .where(Job.automation_id == run.id, Job.operation == run.stages[-1])
            .group_by(Job.status)
        ).all()
    )
    if not counts.get("succeeded"):
        return "failed"
    failed = session.scalar(
        select(func.count())
        .select_from(Job)
        .where(Job.automation_id == run.id, Job.status != "succeeded")
    )
    return "partially_succeeded" if failed or run.skipped_children else "succeeded"


def finish_if_done(session: Session, run: AutomationRun, now: datetime) -> str | None:
    """End the run if none of its jobs is still open: final status, the pool's rest
    released and the event queued, in this transaction; only one ending wins. The
    caller holds the run row's lock."""
    open_jobs = session.scalar(
        select(func.count())
        .select_from(Job)
        .where(Job.automation_id == run.id, Job.status.not_in(FINAL_JOB_STATUSES))
    )
    if open_jobs:
        return None
    status = final_status(session, run)
    won = session.execute(
        update(AutomationRun)
        .where(AutomationRun.id == run.id, AutomationRun.status.not_in(FINAL_RUN_STATUSES))
        .values(status=status, finished_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    if not won:
        return None
    ledger.release_run(session, run.id)
    session.refresh(run)
    return queue_automation_event(session, run, run_totals(session, run), now)


def run_totals(session: Session, run: AutomationRun) -> dict[str, Any]:
    """The run's money and outcome: held, charged, released and still held credits."""
    charged, open_holds = session.execute(
        select(
            func.coalesce(func.sum(Job.credits_charged), 0),
            func.coalesce(
                func.sum(CreditReservation.amount).filter(CreditReservation.status == "held"), 0
            ),
        )
        .select_from(Job)
        .join(CreditReservation, CreditReservation.job_id == Job.id)
        .where(Job.automation_id == run.id)
    ).one()
    still_held = int(open_holds) + run.held_credits
    return {
        "id": run.id,
        "status": run.status,
        "reserved_credits": run.reserved_credits,
        "credits_charged": int(charged),
        "released_credits": run.reserved_credits - int(charged) - still_held,
        "held_credits": still_held,
        "finished_at": as_utc(run.finished_at).isoformat() if run.finished_at else None,
    }
