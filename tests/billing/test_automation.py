"""Automation runs in billing: the run's hold and its carved job holds, fan-out in the
ending transaction (exactly once), the final status, cancel, and the audit's checks.
Jobs are driven with `start_job` / `finish_run` as a worker would; on both databases."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, text

from billing import automation, ledger, runs
from billing.audit import audit
from billing.errors import AutomationNotCancellable, InsufficientCredits, InvalidInput
from billing.pricing import Usage
from billing.runs import Outcome, Refused, finish_run, start_job
from models import (
    Account,
    AutomationRun,
    Cluster,
    Content,
    Idea,
    ImagePrompt,
    Job,
    WebhookDelivery,
    utcnow,
)
from models.db import transaction
from tests.factories import HOLD_TTL, balances, make_account

KEYWORDS = ["running shoes", "trail running", "yoga mats"]
TWO_STAGES = {"keywords": KEYWORDS, "stages": ["clustering", "idea_generation"]}


def submit(url: str, account_id: str, raw: dict[str, Any], **kwargs: Any) -> str:
    with transaction(url) as session:
        account = session.get(Account, account_id)
        assert account is not None
        return automation.submit_run(session, account, raw, hold_ttl=HOLD_TTL, **kwargs).run.id


def open_jobs(url: str, run_id: str, operation: str | None = None) -> list[str]:
    with transaction(url) as session:
        query = select(Job.id).where(Job.automation_id == run_id, Job.status == "queued")
        if operation:
            query = query.where(Job.operation == operation)
        return list(session.scalars(query.order_by(Job.child_index)))


def dispatch_and_start(session: Any, job_id: str) -> Any:
    """Admitted (as if a slot was free), then started by a worker."""
    session.execute(
        text("UPDATE jobs SET dispatched_at = :now WHERE id = :j"), {"now": utcnow(), "j": job_id}
    )
    return start_job(session, job_id)


def run_job(url: str, job_id: str, outcome: Outcome | None = None) -> None:
    """Start and end one job as a worker does; artifacts are made from its input."""
    with transaction(url) as session:
        run = dispatch_and_start(session, job_id)
        assert run is not None
        if outcome is None:
            outcome = Outcome(Usage(tokens_in=50, tokens_out=50), {}, _artifacts(run))
        finish_run(session, run, outcome)


def _artifacts(run: Any) -> list[Any]:
    common = {"account_id": run.account_id, "job_id": run.job_id, "site_id": run.site_id}
    if run.operation == "clustering":
        return [Cluster(name=k, keywords=[k], **common) for k in run.input["keywords"]]
    if run.operation == "idea_generation":
        return [Idea(title=f"idea {n}", **common) for n in range(run.input["count"])]
    if run.operation == "content_generation":
        return [Content(title="t", body="Some text. More text.", word_count=4, **common)]
    if run.operation == "image_prompt_extraction":
        return [ImagePrompt(prompt=f"p{n}", **common) for n in range(run.input["count"])]
    return []


def the_run(url: str, run_id: str) -> AutomationRun:
    with transaction(url) as session:
        run = session.get(AutomationRun, run_id)
        assert run is not None
        session.expunge(run)
        return run


def clean(url: str) -> None:
    with transaction(url) as session:
        assert audit(session) == []


def test_the_estimate_is_the_hold_and_writes_nothing(db_url: str) -> None:
    with transaction(db_url) as session:
        account = make_account(session, credits=100_000)
        estimate = automation.estimate_run(session, account, {"keywords": KEYWORDS})
        assert session.scalar(select(func.count()).select_from(AutomationRun)) == 0
    view = estimate.view()
    assert view["affordable"]
    assert view["credits"] > 0
    assert [s["max_jobs"] for s in view["stages"].values()] == [1, 3, 3, 3, 3]
    run_id = submit(db_url, account.id, {"keywords": KEYWORDS})
    assert the_run(db_url, run_id).reserved_credits == view["credits"]
    with transaction(db_url) as session:
        assert balances(session, account.id) == (100_000, view["credits"])
    clean(db_url)


def test_a_run_beyond_the_credits_is_refused_with_nothing_written(db_url: str) -> None:
    with transaction(db_url) as session:
        account = make_account(session, credits=20)
    with pytest.raises(InsufficientCredits) as refused:
        submit(db_url, account.id, {"keywords": KEYWORDS})
    assert refused.value.details["available"] == 20
    assert refused.value.details["required"] > 20
    with transaction(db_url) as session:
        assert session.scalar(select(func.count()).select_from(AutomationRun)) == 0
        assert session.scalar(select(func.count()).select_from(Job)) == 0
        assert balances(session, account.id) == (20, 0)


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({}, "body"),
        ({"keywords": KEYWORDS, "stages": ["idea_generation"]}, "body"),
        ({"keywords": KEYWORDS, "options": {"ideas_per_cluster": 11}}, "options.ideas_per_cluster"),
        ({"keywords": KEYWORDS, "options": {"max_clusters": 0}}, "options.max_clusters"),
        ({"keywords": KEYWORDS, "options": {"models": {"clustering": "nope"}}}, "model"),
        ({"keywords": ["k"] * 101}, "keywords"),
        ({"keywords": KEYWORDS, "options": {"images_per_prompt": "2"}}, "options.images_per"),
    ],
)
def test_bad_options_are_refused(db_url: str, raw: dict[str, Any], field: str) -> None:
    with transaction(db_url) as session:
        account = make_account(session)
    with pytest.raises(InvalidInput) as refused:
        submit(db_url, account.id, raw)
    assert any(name.startswith(field) for name in refused.value.details["fields"])


def test_children_are_carved_from_the_run_and_made_once(db_url: str) -> None:
    with transaction(db_url) as session:
        account = make_account(session, credits=100_000).id
    run_id = submit(db_url, account, TWO_STAGES)
    hold = the_run(db_url, run_id).reserved_credits
    [clustering] = open_jobs(db_url, run_id)

    run_job(db_url, clustering)

    children = open_jobs(db_url, run_id, "idea_generation")
    assert len(children) == 3
    with transaction(db_url) as session:
        credits, reserved = balances(session, account)
        first = session.get(Job, clustering)
        assert first is not None
        assert credits == 100_000 - (first.credits_charged or 0)
        run = session.get(AutomationRun, run_id)
        assert run is not None
        carved = list(session.scalars(select(Job.reserved_credits).where(Job.id.in_(children))))
        # The clustering hold left the account's reserved; the children's came from the pool.
        assert reserved == hold - first.reserved_credits == run.held_credits + sum(carved)
        assert max(carved) <= run.plan["idea_generation"]["hold"]
    clean(db_url)


def test_a_redelivered_ending_makes_no_second_children(db_url: str) -> None:
    with transaction(db_url) as session:
        account = make_account(session, credits=100_000).id
    run_id = submit(db_url, account, TWO_STAGES)
    [clustering] = open_jobs(db_url, run_id)
    with transaction(db_url) as session:
        run = dispatch_and_start(session, clustering)
        assert run is not None
    answer = Outcome(Usage(tokens_in=50, tokens_out=50), {}, [])
    for _ in range(2):
        with transaction(db_url) as session:
            artifacts = _artifacts(run)
            finish_run(session, run, Outcome(answer.usage, {}, artifacts))
    with transaction(db_url) as session:
        made = session.scalar(
            select(func.count()).select_from(Job).where(Job.parent_job_id == clustering)
        )
    assert made == 3
    clean(db_url)


def test_the_last_ending_ends_the_run_and_releases_the_rest(db_url: str) -> None:
    with transaction(db_url) as session:
        account = make_account(session, credits=100_000).id
    run_id = submit(db_url, account, TWO_STAGES)
    run_job(db_url, open_jobs(db_url, run_id)[0])
    first, second, third = open_jobs(db_url, run_id, "idea_generation")
    run_job(db_url, first)
    run_job(db_url, second, Outcome(error=("provider_error", "down")))
    assert the_run(db_url, run_id).status == "queued"

    run_job(db_url, third)

    run = the_run(db_url, run_id)
    assert (run.status, run.held_credits) == ("partially_succeeded", 0)
    with transaction(db_url) as session:
        charged = sum(
            session.scalars(select(Job.credits_charged).where(Job.automation_id == run_id))
        )
        assert balances(session, account) == (100_000 - charged, 0)
        assert (
            automation.run_view(session, run)["released_credits"] == run.reserved_credits - charged
        )
    clean(db_url)


def test_a_runs_jobs_waiting_for_a_worker_keep_their_holds_until_the_maximum_queue_age(
    db_url: str,
) -> None:
    """The hold sweeper treats a run's job as any job: dispatched and waiting for a worker
    it keeps its carved hold past the hold TTL; past the maximum queue age it fails
    (`queue_timeout`, uncharged), which ends its branch, and the last ending ends the run
    and releases the pool."""
    with transaction(db_url) as session:
        account = make_account(session, credits=100_000).id
    run_id = submit(db_url, account, TWO_STAGES)
    run_job(db_url, open_jobs(db_url, run_id)[0])
    first, *stuck = open_jobs(db_url, run_id, "idea_generation")
    run_job(db_url, first)
    hold_ttl, max_queue = timedelta(minutes=15), timedelta(hours=24)

    with transaction(db_url) as session:
        assert all(session.get(Job, job_id).dispatched_at for job_id in stuck)
        later = utcnow() + HOLD_TTL + timedelta(hours=1)
        assert runs.sweep_expired_holds(session, later, hold_ttl, max_queue).job_ids == []
    assert the_run(db_url, run_id).status == "queued"
    clean(db_url)

    with transaction(db_url) as session:
        too_late = utcnow() + max_queue + timedelta(hours=1)
        swept = runs.sweep_expired_holds(session, too_late, hold_ttl, max_queue)
    assert sorted(swept.job_ids) == sorted(stuck)
    run = the_run(db_url, run_id)
    assert (run.status, run.held_credits) == ("partially_succeeded", 0)
    with transaction(db_url) as session:
        errors = session.scalars(select(Job.error_code).where(Job.id.in_(stuck))).all()
        assert errors == ["queue_timeout"] * len(stuck)
        charged = sum(
            session.scalars(select(Job.credits_charged).where(Job.automation_id == run_id))
        )
        assert balances(session, account) == (100_000 - charged, 0)
    clean(db_url)


def test_the_runs_ending_queues_its_signed_event_once(db_url: str) -> None:
    with transaction(db_url) as session:
        account = make_account(session, credits=100_000).id
    hook = "https://hooks.example.com/runs"
    run_id = submit(db_url, account, TWO_STAGES, webhook_url=hook)
    run_job(db_url, open_jobs(db_url, run_id)[0])
    for job_id in open_jobs(db_url, run_id, "idea_generation"):
        run_job(db_url, job_id)
    with transaction(db_url) as session:
        events = session.scalars(
            select(WebhookDelivery).where(WebhookDelivery.automation_id == run_id)
        ).all()
        assert [(e.event_type, e.url) for e in events] == [("automation.succeeded", hook)]
        data = events[0].payload["data"]
        assert (data["id"], data["status"], data["held_credits"]) == (run_id, "succeeded", 0)
        assert data["credits_charged"] + data["released_credits"] == data["reserved_credits"]


def test_a_failed_clustering_fails_the_run(db_url: str) -> None:
    with transaction(db_url) as session:
        account = make_account(session, credits=100_000).id
    run_id = submit(db_url, account, TWO_STAGES)
    run_job(db_url, open_jobs(db_url, run_id)[0], Outcome(error=("provider_error", "down")))
    assert the_run(db_url, run_id).status == "failed"
    with transaction(db_url) as session:
        assert balances(session, account) == (100_000, 0)
    clean(db_url)


ON_GPT_4O = {
    **TWO_STAGES,
    "options": {"models": {"clustering": "gpt-4o", "idea_generation": "gpt-4o"}},
}


def move_to_free(client: Any, account_id: str) -> None:
    moved = client.patch(
        f"/v1/admin/accounts/{account_id}",
        json={"plan": "free"},
        headers={"X-Admin-Token": "test-admin-token"},
    )
    assert moved.status_code == 200, moved.get_json()


def assert_ended_with_the_pool_released(url: str, account_id: str, run_id: str) -> None:
    run = the_run(url, run_id)
    assert (run.status, run.held_credits) == ("failed", 0)
    with transaction(url) as session:
        charged = sum(
            session.scalars(select(Job.credits_charged).where(Job.automation_id == run_id))
        )
        assert balances(session, account_id) == (100_000 - charged, 0)
        assert automation.run_view(session, run)["released_credits"] == (
            run.reserved_credits - charged
        )
    clean(url)


def test_a_runs_jobs_made_before_a_downgrade_do_not_run_on_the_refused_model(
    client: Any, db_url: str
) -> None:
    with transaction(db_url) as session:
        account = make_account(session, credits=100_000).id
    run_id = submit(db_url, account, ON_GPT_4O)
    run_job(db_url, open_jobs(db_url, run_id)[0])
    children = open_jobs(db_url, run_id, "idea_generation")
    assert len(children) == 3
    move_to_free(client, account)

    for job_id in children:
        with transaction(db_url) as session:
            assert isinstance(dispatch_and_start(session, job_id), Refused)

    with transaction(db_url) as session:
        ended = session.execute(
            select(Job.status, Job.error_code, Job.credits_charged).where(Job.id.in_(children))
        ).all()
        assert ended == [("failed", "model_not_allowed", 0)] * 3
    assert_ended_with_the_pool_released(db_url, account, run_id)


def test_no_child_is_made_on_a_model_the_plan_no_longer_allows(client: Any, db_url: str) -> None:
    """Moved to free while the (allowed) first stage ran: the next stage's model is
    refused, so its children are not made (nothing carved); the run ends, pool released."""
    with transaction(db_url) as session:
        account = make_account(session, credits=100_000).id
    options = {"models": {"clustering": "gpt-4o-mini", "idea_generation": "gpt-4o"}}
    run_id = submit(db_url, account, {**TWO_STAGES, "options": options})
    [clustering] = open_jobs(db_url, run_id)
    with transaction(db_url) as session:
        run = dispatch_and_start(session, clustering)
        assert run is not None
    move_to_free(client, account)

    with transaction(db_url) as session:
        finish_run(session, run, Outcome(Usage(tokens_in=50, tokens_out=50), {}, _artifacts(run)))

    with transaction(db_url) as session:
        made = session.scalar(
            select(func.count()).select_from(Job).where(Job.parent_job_id == clustering)
        )
        assert made == 0
    assert the_run(db_url, run_id).skipped_children == 3
    assert_ended_with_the_pool_released(db_url, account, run_id)


def test_no_child_is_made_whose_answer_could_outgrow_its_models_output_cap(
    db_url: str,
) -> None:
    """A keyword of 300 backslashes (valid, and cheap to cluster): ten ideas about its
    cluster could need ~25,600 output tokens, more than gpt-4o-mini writes (the provider
    would refuse the job); that child is skipped, the ordinary cluster's is made."""
    slashes = "\\" * 300
    with transaction(db_url) as session:
        account = make_account(session, credits=100_000).id
    body = {**TWO_STAGES, "keywords": [*KEYWORDS, slashes], "options": {"ideas_per_cluster": 10}}
    run_id = submit(db_url, account, body)
    [clustering] = open_jobs(db_url, run_id)
    with transaction(db_url) as session:
        run = dispatch_and_start(session, clustering)
        assert run is not None
        common = {"account_id": account, "job_id": clustering, "site_id": None}
        clusters = [
            Cluster(name="running", keywords=["running shoes"], **common),
            Cluster(name="slashes", keywords=[slashes], **common),
        ]

    with transaction(db_url) as session:
        finish_run(session, run, Outcome(Usage(tokens_in=50, tokens_out=50), {}, clusters))

    made = open_jobs(db_url, run_id, "idea_generation")
    assert len(made) == 1
    with transaction(db_url) as session:
        child = session.get(Job, made[0])
        assert child is not None
        assert child.input["cluster"]["name"] == "running"
    assert the_run(db_url, run_id).skipped_children == 1
    clean(db_url)


def test_cancel_ends_queued_jobs_and_closes_the_hold(db_url: str) -> None:
    with transaction(db_url) as session:
        account = make_account(session, credits=100_000).id
    run_id = submit(db_url, account, TWO_STAGES)
    run_job(db_url, open_jobs(db_url, run_id)[0])
    with transaction(db_url) as session:
        automation.cancel_run(session, account, run_id)
    run = the_run(db_url, run_id)
    assert (run.status, run.held_credits) == ("cancelled", 0)
    assert open_jobs(db_url, run_id) == []
    with transaction(db_url) as session:
        assert balances(session, account)[1] == 0
        with pytest.raises(AutomationNotCancellable):
            automation.cancel_run(session, account, run_id)
    clean(db_url)


def test_a_cancelled_runs_job_does_not_start(db_url: str) -> None:
    with transaction(db_url) as session:
        account = make_account(session, credits=100_000).id
    run_id = submit(db_url, account, TWO_STAGES)
    [clustering] = open_jobs(db_url, run_id)
    with transaction(db_url) as session:
        session.execute(text("UPDATE automation_runs SET cancel_requested_at = :now"),
                        {"now": utcnow()})  # fmt: skip
        assert dispatch_and_start(session, clustering) is None
    with transaction(db_url) as session:
        automation.sweep_cancelled_runs(session)
    assert the_run(db_url, run_id).status == "cancelled"
    clean(db_url)


def test_a_cancel_that_meets_the_runs_end_is_refused_not_flagged(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cancel read the run open; its last job's ending finished the run before the
    cancel wrote (a request's read and its write are apart). The cancel answers 409, and
    the succeeded run carries no cancel flag."""
    with transaction(db_url) as session:
        account = make_account(session, credits=100_000).id
    run_id = submit(db_url, account, {"keywords": KEYWORDS, "stages": ["clustering"]})
    [last_job] = open_jobs(db_url, run_id)
    with transaction(db_url) as session:
        read_open = session.get(AutomationRun, run_id)
        assert read_open is not None
        assert read_open.status == "queued"
        session.expunge(read_open)
    run_job(db_url, last_job)  # another worker ends the run's last job now
    monkeypatch.setattr(automation, "get_run", lambda *_: read_open)

    with transaction(db_url) as session, pytest.raises(AutomationNotCancellable):
        automation.cancel_run(session, account, run_id)

    run = the_run(db_url, run_id)
    assert (run.status, run.cancel_requested_at) == ("succeeded", None)
    clean(db_url)


def test_the_idempotency_key_returns_the_first_run(db_url: str) -> None:
    with transaction(db_url) as session:
        account = make_account(session, credits=100_000).id
    first = submit(db_url, account, TWO_STAGES, idempotency_key="k1")
    assert submit(db_url, account, TWO_STAGES, idempotency_key="k1") == first
    with transaction(db_url) as session:
        assert session.scalar(select(func.count()).select_from(AutomationRun)) == 1


# --- the audit ---------------------------------------------------------------------------


@pytest.fixture
def running(db_url: str) -> tuple[str, str]:
    with transaction(db_url) as session:
        account = make_account(session, credits=100_000).id
    run_id = submit(db_url, account, TWO_STAGES)
    run_job(db_url, open_jobs(db_url, run_id)[0])
    clean(db_url)
    return account, run_id


def broken(url: str, statement: str, **params: Any) -> list[str]:
    with transaction(url) as session:
        session.execute(text(statement), params)
    with transaction(url) as session:
        return audit(session)


def test_the_audit_sees_a_pool_drifting_from_the_hold(
    db_url: str, running: tuple[str, str]
) -> None:
    account, run_id = running
    violations = broken(
        db_url,
        "UPDATE automation_runs SET held_credits = held_credits - 1, "
        "released_credits = released_credits + 1 WHERE id = :r",
        r=run_id,
    )
    assert violations == [f"account {account}: reserved_credits " + violations[0].split(
        "reserved_credits ")[1]]  # fmt: skip
    assert "!= sum of open holds" in violations[0]


def test_the_audit_sees_a_hold_not_accounted_for(db_url: str, running: tuple[str, str]) -> None:
    _, run_id = running
    violations = broken(
        db_url, "UPDATE automation_runs SET reserved_credits = reserved_credits + 5 WHERE id = :r",
        r=run_id,
    )  # fmt: skip
    assert len(violations) == 1
    assert violations[0].startswith(f"automation {run_id}: hold ")


def test_the_audit_sees_a_job_spending_outside_its_run(
    db_url: str, running: tuple[str, str]
) -> None:
    _, run_id = running
    child = open_jobs(db_url, run_id, "idea_generation")[0]
    violations = broken(
        db_url, "UPDATE credit_reservations SET automation_id = NULL WHERE job_id = :j", j=child
    )
    assert f"job {child}: of automation '{run_id}' but its hold was carved from None" in violations


def test_the_audit_sees_an_ended_run_still_pooling(db_url: str, running: tuple[str, str]) -> None:
    _, run_id = running
    violations = broken(
        db_url, "UPDATE automation_runs SET status = 'failed' WHERE id = :r", r=run_id
    )
    assert len(violations) == 1
    assert f"automation {run_id}: failed but still pools" in violations[0]


def test_release_run_gives_back_the_pool_once(db_url: str) -> None:
    with transaction(db_url) as session:
        account = make_account(session, credits=100_000).id
    run_id = submit(db_url, account, TWO_STAGES)
    pooled = the_run(db_url, run_id).held_credits
    with transaction(db_url) as session:
        assert ledger.release_run(session, run_id) == pooled
        assert ledger.release_run(session, run_id) == 0


def test_outputs_beyond_max_clusters_are_not_used(db_url: str) -> None:
    with transaction(db_url) as session:
        account = make_account(session, credits=100_000).id
    run_id = submit(db_url, account, {**TWO_STAGES, "options": {"max_clusters": 2}})
    assert the_run(db_url, run_id).plan["idea_generation"]["jobs"] == 2

    run_job(db_url, open_jobs(db_url, run_id)[0])  # 3 clusters, one per keyword

    children = open_jobs(db_url, run_id, "idea_generation")
    assert len(children) == 2
    for job_id in children:
        run_job(db_url, job_id)
    run = the_run(db_url, run_id)
    assert (run.status, run.skipped_children, run.held_credits) == ("succeeded", 0, 0)
    clean(db_url)
