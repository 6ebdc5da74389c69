"""Job lifecycle in billing/jobs.py: submit (job + hold together), idempotency, cancel,
start / complete / fail on the worker side, redelivery, and the expired-hold sweep."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, inspect, select, update

from billing import job_views, ledger, runs, unbilled
from billing.audit import audit
from billing.errors import (
    AccountInactive,
    IdempotencyConflict,
    InsufficientCredits,
    InvalidInput,
    JobNotCancellable,
    NotFound,
)
from billing.pricing import Usage
from billing.runs import Refused, complete_job, fail_job, start_job
from billing.submission import JobRequest, submit_job
from models import (
    Account,
    AIModelConfig,
    Cluster,
    CreditReservation,
    CreditTransaction,
    CreditUsageLog,
    Job,
    Keyword,
    Site,
    UnbilledUsage,
    WebhookDelivery,
    utcnow,
)
from models.base import as_utc
from models.db import session_factory, transaction
from tests.factories import (
    CLUSTERING,
    balances,
    catalog_restored,
    hold_for,
    make_account,
    request,
    statements_of,
    submit,
)

TTL = timedelta(minutes=30)
# JOB_MAX_QUEUE_SECONDS's default.
MAX_QUEUE = timedelta(hours=24)
IMAGES = {"operation": "image_generation", "input": {"prompt": "a red fox", "count": 3}}


def count(session: Any, model: Any, **where: Any) -> int:
    query = select(func.count()).select_from(model)
    for name, value in where.items():
        query = query.where(getattr(model, name) == value)
    return int(session.scalar(query) or 0)


def hold_of(session: Any, job_id: str) -> CreditReservation:
    hold = session.scalar(select(CreditReservation).where(CreditReservation.job_id == job_id))
    assert hold is not None
    return hold


def assert_audit_clean(url: str) -> None:
    with transaction(url) as session:
        assert audit(session) == []


def new_account(url: str, credits: int = 10_000, **kwargs: Any) -> str:
    with transaction(url) as session:
        return make_account(session, credits=credits, **kwargs).id


def submitted(url: str, account_id: str, body: dict[str, Any] = CLUSTERING, **kw: Any) -> str:
    with transaction(url) as session:
        return submit(session, account_id, request(body, **kw)).id


# --- submit ------------------------------------------------------------------------------


def test_submit_writes_the_job_and_its_hold_together(db_url: str) -> None:
    account_id = new_account(db_url, credits=1000)

    with transaction(db_url) as session:
        acct = session.get(Account, account_id)
        expected = hold_for(session, acct, request(IMAGES))
        result = submit_job(session, acct, request(IMAGES), TTL)
        assert result.created
        job_id = result.job.id

    assert expected == 3  # 3 images x 1 credit on hidream-full (starter's default)
    with transaction(db_url) as session:
        job = session.get(Job, job_id)
        assert job is not None
        assert job_id.startswith("job_")
        assert (job.status, job.model) == ("queued", "hidream-full")
        assert job.operation == "image_generation"
        assert job.reserved_credits == expected
        assert job.input == {"prompt": "a red fox", "count": 3}
        assert hold_of(session, job_id).amount == expected
        assert balances(session, account_id) == (1000, expected)
    assert_audit_clean(db_url)


def test_submit_without_credits_leaves_no_job_behind(db_url: str) -> None:
    account_id = new_account(db_url, credits=2)

    with pytest.raises(InsufficientCredits) as refused, transaction(db_url) as session:
        submit(session, account_id, request(IMAGES))
    assert refused.value.details == {"required": 3, "available": 2}

    with transaction(db_url) as session:
        assert count(session, Job) == 0
        assert count(session, CreditReservation) == 0
        assert balances(session, account_id) == (2, 0)


@pytest.mark.parametrize("status", ["suspended", "cancelled"])
def test_submit_for_an_inactive_account_is_refused(db_url: str, status: str) -> None:
    account_id = new_account(db_url, status=status)
    with pytest.raises(AccountInactive), transaction(db_url) as session:
        submit(session, account_id, request(IMAGES))
    with transaction(db_url) as session:
        assert count(session, Job) == 0


def test_submit_validates_before_writing(db_url: str) -> None:
    account_id = new_account(db_url)
    with pytest.raises(InvalidInput) as refused, transaction(db_url) as session:
        submit(session, account_id, request({"operation": "clustering", "input": {}}))
    assert "input.keywords" in refused.value.details["fields"]
    with pytest.raises(InvalidInput), transaction(db_url) as session:
        submit(session, account_id, request({"operation": "telepathy", "input": {}}))
    with transaction(db_url) as session:
        assert count(session, Job) == 0


def test_clustering_expands_the_accounts_own_keyword_ids(db_url: str) -> None:
    with transaction(db_url) as session:
        acct = make_account(session)
        site = Site(account_id=acct.id, name="blog")
        session.add(site)
        session.flush()
        kw = Keyword(account_id=acct.id, site_id=site.id, keyword="trail running")
        session.add(kw)
        session.flush()
        account_id, site_id, kw_id = acct.id, site.id, kw.id
        intruder = make_account(session).id

    body = {"operation": "clustering", "input": {"keywords": ["hiking"], "keyword_ids": [kw_id]}}
    with transaction(db_url) as session:
        job = submit_job(
            session, session.get(Account, account_id),
            JobRequest(body["operation"], body["input"], site_id=site_id), TTL,
        ).job  # fmt: skip
        assert job.input == {"keywords": ["hiking", "trail running"]}

    with pytest.raises(NotFound, match="Keyword ids not found"), transaction(db_url) as session:
        submit(session, intruder, request(body))


# --- idempotency -------------------------------------------------------------------------


def test_same_idempotency_key_returns_the_first_job(db_url: str) -> None:
    account_id = new_account(db_url)
    with transaction(db_url) as session:
        first = submit_job(session, session.get(Account, account_id), request(key="k-1"), TTL)
    with transaction(db_url) as session:
        again = submit_job(session, session.get(Account, account_id), request(key="k-1"), TTL)

    assert first.created
    assert not again.created
    assert again.job.id == first.job.id
    with transaction(db_url) as session:
        assert count(session, Job) == 1
        assert count(session, CreditReservation) == 1
        assert balances(session, account_id)[1] == first.job.reserved_credits


def test_same_idempotency_key_with_another_body_is_a_conflict(db_url: str) -> None:
    account_id = new_account(db_url)
    first = submitted(db_url, account_id, key="k-2")

    with pytest.raises(IdempotencyConflict) as conflict, transaction(db_url) as session:
        submit(session, account_id, request(IMAGES, key="k-2"))
    assert conflict.value.details == {"job_id": first}
    assert conflict.value.code == "idempotency_conflict"

    with pytest.raises(IdempotencyConflict), transaction(db_url) as session:
        submit(session, account_id, request(key="k-2", model="gpt-4o"))
    with transaction(db_url) as session:
        assert count(session, Job) == 1


def test_idempotency_keys_are_per_account(db_url: str) -> None:
    one, two = new_account(db_url), new_account(db_url)
    assert submitted(db_url, one, key="shared") != submitted(db_url, two, key="shared")


def test_an_idempotency_key_still_replays_after_24_hours(db_url: str) -> None:
    """Keys live on the job row, so they are kept as long as the job (at least 24 h)."""
    account_id = new_account(db_url)
    first = submitted(db_url, account_id, key="k-old")
    with transaction(db_url) as session:
        job = session.get(Job, first)
        assert job is not None
        job.created_at = utcnow() - timedelta(hours=25)
    with transaction(db_url) as session:
        again = submit_job(session, session.get(Account, account_id), request(key="k-old"), TTL)
    assert (again.created, again.job.id) == (False, first)


@pytest.mark.parametrize("key", ["", "x" * 256, "tab\there"])
def test_malformed_idempotency_key_is_invalid(db_url: str, key: str) -> None:
    account_id = new_account(db_url)
    with pytest.raises(InvalidInput), transaction(db_url) as session:
        submit(session, account_id, request(key=key))


def test_20_concurrent_submissions_with_one_key_make_one_job(db_url: str) -> None:
    account_id = new_account(db_url)
    callers = 20
    barrier = threading.Barrier(callers)
    lock = threading.Lock()
    outcomes: list[tuple[str, bool]] = []
    errors: list[BaseException] = []

    def call() -> None:
        try:
            barrier.wait(30)
            with transaction(db_url) as session:
                acct = session.get(Account, account_id)
                result = submit_job(session, acct, request(key="race-key"), TTL)
                outcome = (result.job.id, result.created)
            with lock:
                outcomes.append(outcome)
        except BaseException as exc:
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)

    assert errors == []
    assert len(outcomes) == callers
    assert len({job_id for job_id, _ in outcomes}) == 1
    assert sum(created for _, created in outcomes) == 1
    with transaction(db_url) as session:
        assert count(session, Job) == 1
        assert count(session, CreditReservation) == 1
        job = session.get(Job, outcomes[0][0])
        assert job is not None
        assert balances(session, account_id)[1] == job.reserved_credits
        assert audit(session) == []


# --- cancel ------------------------------------------------------------------------------


def test_cancel_a_queued_job_releases_its_hold(db_url: str) -> None:
    account_id = new_account(db_url, credits=100)
    job_id = submitted(db_url, account_id, IMAGES)

    with transaction(db_url) as session:
        runs.cancel_job(session, account_id, job_id)
        job = job_views.get_job(session, account_id, job_id)
        assert (job.status, job.error_code) == ("cancelled", "cancelled")

    with transaction(db_url) as session:
        assert balances(session, account_id) == (100, 0)
        assert hold_of(session, job_id).status == "released"
        with pytest.raises(JobNotCancellable) as refused:
            runs.cancel_job(session, account_id, job_id)
        assert refused.value.details == {"status": "cancelled"}
    assert_audit_clean(db_url)


def test_cancel_of_a_running_job_is_recorded_for_its_worker(db_url: str) -> None:
    """Running: the cancel is recorded and the job keeps its hold until the worker's
    next safe point ends it (see the finish_run tests); another account's job is 404,
    an ended job 409."""
    account_id, other = new_account(db_url), new_account(db_url)
    job_id = submitted(db_url, account_id, IMAGES)
    with transaction(db_url) as session:
        with pytest.raises(NotFound):
            runs.cancel_job(session, other, job_id)
        assert start_job(session, job_id) is not None
    with transaction(db_url) as session:
        assert not runs.cancel_job(session, account_id, job_id)
        assert not runs.cancel_job(session, account_id, job_id)  # asking twice is fine
    with transaction(db_url) as session:
        job = session.get(Job, job_id)
        assert (job.status, job.cancel_requested_at is not None) == ("running", True)
        assert hold_of(session, job_id).status == "held"
        assert runs.should_stop(session, job_id)
        fail_job(session, job_id, "provider_unavailable", "down")
    with pytest.raises(JobNotCancellable), transaction(db_url) as session:
        runs.cancel_job(session, account_id, job_id)
    assert_audit_clean(db_url)


# --- the worker side ---------------------------------------------------------------------


def test_start_complete_settles_at_the_actual_cost(db_url: str) -> None:
    account_id = new_account(db_url, credits=1000)
    job_id = submitted(db_url, account_id)

    with transaction(db_url) as session:
        run = start_job(session, job_id)
        assert run is not None
        assert (run.model, run.provider_model, run.attempts) == ("gpt-4o-mini", "gpt-4o-mini", 1)
        hold = run.hold
        assert session.get(Job, job_id).status == "running"

    with transaction(db_url) as session:
        artifacts = [
            Cluster(name="Shoes", keywords=["running shoes"], account_id=account_id, job_id=job_id)
        ]
        assert complete_job(session, run, Usage(150, 120), {"clusters": []}, artifacts)

    with transaction(db_url) as session:
        job = session.get(Job, job_id)
        assert job is not None
        assert (job.status, job.credits_charged, job.result) == ("succeeded", 3, {"clusters": []})
        assert job.finished_at is not None
        assert balances(session, account_id) == (997, 0)
        log = session.scalar(select(CreditUsageLog).where(CreditUsageLog.job_id == job_id))
        assert log is not None
        assert (log.tokens_in, log.tokens_out, log.credits, log.items_created) == (150, 120, 3, 1)
        assert count(session, Cluster, job_id=job_id) == 1
        assert hold > 3
    assert_audit_clean(db_url)


def test_redelivered_completion_changes_nothing(db_url: str) -> None:
    account_id = new_account(db_url, credits=1000)
    job_id = submitted(db_url, account_id)
    with transaction(db_url) as session:
        run = start_job(session, job_id)
    assert run is not None
    with transaction(db_url) as session:
        assert complete_job(session, run, Usage(100, 100), {"n": 1}, [])
    with transaction(db_url) as session:
        assert start_job(session, job_id) is None  # a final job is not started again
        assert not complete_job(session, run, Usage(900, 900), {"n": 2}, [])

    with transaction(db_url) as session:
        job = session.get(Job, job_id)
        assert (job.result, job.credits_charged) == ({"n": 1}, 2)
        assert balances(session, account_id) == (998, 0)
        assert count(session, CreditTransaction, type="deduction") == 1
    assert_audit_clean(db_url)


def test_a_running_job_redelivered_runs_again_and_is_charged_once(db_url: str) -> None:
    account_id = new_account(db_url, credits=1000)
    job_id = submitted(db_url, account_id)
    with transaction(db_url) as session:
        first = start_job(session, job_id)
    with transaction(db_url) as session:
        second = start_job(session, job_id)  # the worker died; the broker redelivered
    assert first is not None
    assert second is not None
    assert second.attempts == 2

    with transaction(db_url) as session:
        assert complete_job(session, second, Usage(100, 100), {}, [])
    with transaction(db_url) as session:
        assert not complete_job(session, first, Usage(100, 100), {}, [])
        assert balances(session, account_id) == (998, 0)
    assert_audit_clean(db_url)


def test_concurrent_completions_of_one_job_settle_once(db_url: str) -> None:
    account_id = new_account(db_url, credits=1000)
    job_id = submitted(db_url, account_id)
    with transaction(db_url) as session:
        run = start_job(session, job_id)
    assert run is not None
    racers = 8
    barrier = threading.Barrier(racers)
    results: list[bool] = []
    errors: list[BaseException] = []

    def complete() -> None:
        try:
            barrier.wait(30)
            with transaction(db_url) as session:
                results.append(bool(complete_job(session, run, Usage(100, 100), {}, [])))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=complete) for _ in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert errors == []
    assert sorted(results) == [False] * (racers - 1) + [True]
    with transaction(db_url) as session:
        assert balances(session, account_id) == (998, 0)
        assert count(session, CreditTransaction, type="deduction") == 1
        assert audit(session) == []


def test_fail_job_releases_the_hold(db_url: str) -> None:
    account_id = new_account(db_url, credits=1000)
    job_id = submitted(db_url, account_id)
    with transaction(db_url) as session:
        run = start_job(session, job_id)
        assert fail_job(session, job_id, "provider_unavailable", "down " * 1000)
    assert run is not None

    with transaction(db_url) as session:
        job = session.get(Job, job_id)
        assert (job.status, job.error_code) == ("failed", "provider_unavailable")
        assert len(job.error_message) == 2000
        assert hold_of(session, job_id).status == "released"
        assert balances(session, account_id) == (1000, 0)
        # Late success after the failure: the hold is closed, nothing is charged.
        assert not complete_job(session, run, Usage(10, 10), {}, [])
        assert not fail_job(session, job_id, "again", "again")
        assert session.get(Job, job_id).error_code == "provider_unavailable"
    assert_audit_clean(db_url)


def test_fail_after_success_changes_nothing(db_url: str) -> None:
    account_id = new_account(db_url, credits=1000)
    job_id = submitted(db_url, account_id)
    with transaction(db_url) as session:
        run = start_job(session, job_id)
        assert complete_job(session, run, Usage(10, 10), {}, [])
    with transaction(db_url) as session:
        assert not fail_job(session, job_id, "late", "late")
        assert session.get(Job, job_id).status == "succeeded"
        assert hold_of(session, job_id).status == "settled"
        assert balances(session, account_id) == (999, 0)
    assert_audit_clean(db_url)


# --- the plan's model policy, asked again at start ---------------------------------------

ADMIN = {"X-Admin-Token": "test-admin-token"}
HOOK = "https://hooks.example.com/jobs"


def assert_refused_uncharged(url: str, account_id: str, job_id: str, model: str) -> None:
    """Ended failed `model_not_allowed` without running: hold released, nothing charged."""
    with transaction(url) as session:
        job = session.get(Job, job_id)
        assert job is not None
        assert (job.status, job.error_code, job.credits_charged, job.result) == (
            "failed",
            "model_not_allowed",
            0,
            None,
        )
        assert job.error_message == (
            f"Your plan no longer allows {model} for clustering; nothing was charged."
        )
        assert hold_of(session, job_id).status == "released"
        assert count(session, CreditUsageLog, job_id=job_id) == 0
        assert count(session, CreditTransaction, type="deduction") == 0
        assert start_job(session, job_id) is None  # a redelivered message finds it final
    assert_audit_clean(url)


def test_a_queued_job_on_a_model_the_new_plan_refuses_fails_uncharged(
    client: Any, db_url: str
) -> None:
    """Submitted on starter with gpt-4o, then moved to free by an admin: the worker does
    not run gpt-4o for a free account, and the job ends by the path every failure takes
    (its webhook event, its slot to the next waiting job)."""
    account_id = new_account(db_url, credits=1000)
    with transaction(db_url) as session:
        body = JobRequest("clustering", CLUSTERING["input"], model="gpt-4o", webhook_url=HOOK)
        job_id = submit(session, account_id, body).id
    moved = client.patch(f"/v1/admin/accounts/{account_id}", json={"plan": "free"}, headers=ADMIN)
    assert moved.status_code == 200, moved.get_json()
    # Free: 2 slots, the refused job holds one of them; the third job waits for it.
    running, waiting = submitted(db_url, account_id), submitted(db_url, account_id)
    with transaction(db_url) as session:
        assert session.get(Job, waiting).dispatched_at is None

    with transaction(db_url) as session:
        refused = start_job(session, job_id)
    assert isinstance(refused, Refused)
    assert refused.ending.job_ids == [job_id]  # what the worker sends once it commits
    assert [d.job_id for d in refused.ending.dispatches] == [waiting]

    assert_refused_uncharged(db_url, account_id, job_id, "gpt-4o")
    with transaction(db_url) as session:
        events = session.scalars(select(WebhookDelivery).where(WebhookDelivery.job_id == job_id))
        assert [(e.event_type, e.url) for e in events] == [("job.failed", HOOK)]
        assert session.get(Job, waiting).dispatched_at is not None
        others = hold_of(session, running).amount + hold_of(session, waiting).amount
        assert balances(session, account_id) == (1000, others)


def test_a_queued_job_on_a_model_switched_off_meanwhile_fails_uncharged(db_url: str) -> None:
    """The price list is cached warm by the submission; the stamp tells the start."""
    account_id = new_account(db_url, credits=1000)
    with catalog_restored(db_url):
        job_id = submitted(db_url, account_id, model="gpt-4.1")
        with transaction(db_url) as session:
            session.execute(
                update(AIModelConfig).where(AIModelConfig.name == "gpt-4.1").values(is_active=False)
            )
        with transaction(db_url) as session:
            assert isinstance(start_job(session, job_id), Refused)
    assert_refused_uncharged(db_url, account_id, job_id, "gpt-4.1")
    with transaction(db_url) as session:
        assert balances(session, account_id) == (1000, 0)


def test_a_model_the_plan_still_allows_runs_for_no_extra_statement(db_url: str) -> None:
    """The plan and the catalog stamp ride on the start's own read: with the price list
    warm, the start is still one UPDATE and one SELECT."""
    account_id = new_account(db_url, credits=1000)
    job_id = submitted(db_url, account_id, model="gpt-4o")  # warms the price list
    with transaction(db_url) as session:
        session.get(Account, account_id)  # the transaction is open
        with statements_of(db_url) as statements:
            run = start_job(session, job_id)
        assert run is not None
        assert (run.model, run.provider_model, run.attempts) == ("gpt-4o", "gpt-4o", 1)
    assert len(statements) == 2, statements

    with transaction(db_url) as session:
        assert complete_job(session, run, Usage(100, 100), {}, [])
    with transaction(db_url) as session:
        job = session.get(Job, job_id)
        assert (job.status, job.credits_charged) == ("succeeded", 8)  # gpt-4o: 25 tokens/credit
    assert_audit_clean(db_url)


# --- expired holds -----------------------------------------------------------------------


def test_sweep_releases_only_the_holds_of_dead_jobs(db_url: str) -> None:
    """Expired = past the hold's expiry AND no live work: a running job silent (no
    heartbeat) for a whole hold TTL. A job waiting for a slot, running with a fresh
    heartbeat, or dispatched and waiting for a worker keeps its hold."""
    account_id = new_account(db_url, credits=1000, plan_slug="free-trial")  # 2 slots
    with transaction(db_url) as session:
        acct = session.get(Account, account_id)

        def go(ttl: timedelta) -> str:
            return submit_job(session, acct, request(IMAGES), ttl).job.id

        dead_running = go(timedelta(minutes=1))
        live_running = go(timedelta(minutes=1))
        waiting = go(timedelta(minutes=1))
    later = utcnow() + timedelta(minutes=10)
    with transaction(db_url) as session:
        assert start_job(session, dead_running) is not None  # its worker dies at once
        assert start_job(session, live_running) is not None
        # Its worker heart-beats right up to the sweep.
        runs.record_heartbeats(session, [live_running], later - timedelta(seconds=5))

    with transaction(db_url) as session:
        swept = runs.sweep_expired_holds(session, later, timedelta(minutes=5), MAX_QUEUE)
    assert swept.job_ids == [dead_running]
    # The slot it freed went to the waiting job.
    assert [d.job_id for d in swept.dispatches] == [waiting]

    with transaction(db_url) as session:
        job = session.get(Job, dead_running)
        assert (job.status, job.error_code) == ("failed", "hold_expired")
        assert "stopped heart-beating" in job.error_message
        assert hold_of(session, dead_running).status == "expired"
        assert session.get(Job, live_running).status == "running"
        assert hold_of(session, live_running).status == "held"
        assert hold_of(session, waiting).status == "held"
        assert (
            runs.sweep_expired_holds(session, later, timedelta(minutes=5), MAX_QUEUE).job_ids == []
        )
        # Once silent for a whole TTL, the running job is dead too; the job dispatched at
        # `later` that no worker started yet only waits for one, and keeps its hold.
        silent = later + timedelta(minutes=6)
        swept_later = runs.sweep_expired_holds(session, silent, timedelta(minutes=5), MAX_QUEUE)
        assert swept_later.job_ids == [live_running]
        assert (session.get(Job, waiting).status, hold_of(session, waiting).status) == (
            "queued",
            "held",
        )
        assert balances(session, account_id) == (1000, hold_of(session, waiting).amount)
    assert_audit_clean(db_url)


@pytest.mark.parametrize("waited", [timedelta(hours=2), timedelta(hours=23, minutes=59)])
def test_a_dispatched_job_waiting_for_a_worker_keeps_its_hold(
    db_url: str, waited: timedelta
) -> None:
    """Workers crash-looping or a long backlog: a job sent to the broker but not taken by
    a worker is not lost work (the reconciler re-sends a lost message), so its hold
    outlives HOLD_TTL and `expires_at` until the maximum queue age."""
    account_id = new_account(db_url, credits=1000)
    job_id = submitted(db_url, account_id)
    with transaction(db_url) as session:
        hold = hold_of(session, job_id)
        assert session.get(Job, job_id).dispatched_at is not None
        assert as_utc(hold.expires_at) < utcnow() + waited  # past its own expiry
        swept = runs.sweep_expired_holds(session, utcnow() + waited, TTL, MAX_QUEUE)
        assert swept.job_ids == []
    with transaction(db_url) as session:
        assert session.get(Job, job_id).status == "queued"
        assert hold_of(session, job_id).status == "held"
        assert balances(session, account_id) == (1000, hold_of(session, job_id).amount)
        # A worker that finally takes it runs and settles it as usual.
        run = start_job(session, job_id, now=utcnow() + waited)
        assert run is not None
        assert complete_job(session, run, Usage(10, 10), {"clusters": []}, [])
        assert hold_of(session, job_id).status == "settled"
    assert_audit_clean(db_url)


def test_a_job_queued_past_the_maximum_queue_age_fails_with_queue_timeout(db_url: str) -> None:
    account_id = new_account(db_url, credits=1000, plan_slug="free-trial")  # 2 slots
    first, second, waiting = (submitted(db_url, account_id, IMAGES) for _ in range(3))
    too_late = utcnow() + MAX_QUEUE + timedelta(hours=1)
    with transaction(db_url) as session:
        swept = runs.sweep_expired_holds(session, too_late, TTL, MAX_QUEUE)
    assert sorted(swept.job_ids) == sorted([first, second])
    # The freed slot goes to the job that waited for one (it waits from its dispatch now).
    assert [d.job_id for d in swept.dispatches] == [waiting]
    with transaction(db_url) as session:
        job = session.get(Job, first)
        assert (job.status, job.error_code, job.credits_charged) == ("failed", "queue_timeout", 0)
        assert job.error_message == (
            "The job waited 25 hours without a worker; nothing was charged."
        )
        assert hold_of(session, first).status == "expired"
        assert hold_of(session, second).status == "expired"
        assert (session.get(Job, waiting).status, hold_of(session, waiting).status) == (
            "queued",
            "held",
        )
        assert balances(session, account_id) == (1000, hold_of(session, waiting).amount)
        # A worker that takes a message of the failed job later does nothing.
        assert start_job(session, first, now=too_late) is None
        assert runs.sweep_expired_holds(session, too_late, TTL, MAX_QUEUE).job_ids == []
    assert_audit_clean(db_url)


def _expired_run(db_url: str, credits: int) -> tuple[str, str, Any]:
    account_id = new_account(db_url, credits=credits)
    job_id = submitted(db_url, account_id)
    with transaction(db_url) as session:
        run = start_job(session, job_id)
    with transaction(db_url) as session:
        swept = runs.sweep_expired_holds(session, utcnow() + timedelta(hours=2), TTL, MAX_QUEUE)
        assert swept.job_ids == [job_id]
    return account_id, job_id, run


def test_a_late_answer_for_an_expired_job_is_charged_if_the_account_covers_it(
    db_url: str,
) -> None:
    account_id, job_id, run = _expired_run(db_url, credits=1000)
    with transaction(db_url) as session:
        late = complete_job(session, run, Usage(10, 10), {"clusters": []}, [])
    assert (late.job_ids, late.status) == ([job_id], "succeeded")
    with transaction(db_url) as session:
        job = session.get(Job, job_id)
        assert (job.status, job.credits_charged, job.result) == ("succeeded", 1, {"clusters": []})
        assert hold_of(session, job_id).status == "settled"
        assert balances(session, account_id) == (999, 0)
        deduction = session.scalar(
            select(CreditTransaction).where(CreditTransaction.job_id == job_id)
        )
        assert deduction.metadata_["late"] is True
        # A second late answer (a duplicate run) is not charged again: recorded as unbilled.
        assert not complete_job(session, run, Usage(10, 10), {}, [])
        assert count(session, UnbilledUsage, job_id=job_id, reason="duplicate_run") == 1
    assert_audit_clean(db_url)


def test_a_cancelled_job_stays_cancelled_when_swept_and_when_answered_late(
    db_url: str,
) -> None:
    """The account cancels a running job; its worker goes silent, so the sweeper ends it
    before the reconciler does: `cancelled`, not `hold_expired`. The answer that comes
    late is charged (as a cancel while answering is) and the job stays cancelled, with
    no result."""
    account_id = new_account(db_url, credits=1000)
    job_id = submitted(db_url, account_id)
    with transaction(db_url) as session:
        run = start_job(session, job_id)
        assert run is not None
    with transaction(db_url) as session:
        runs.cancel_job(session, account_id, job_id)
    with transaction(db_url) as session:
        swept = runs.sweep_expired_holds(session, utcnow() + timedelta(hours=2), TTL, MAX_QUEUE)
        assert swept.job_ids == [job_id]
        job = session.get(Job, job_id)
        assert (job.status, job.error_code) == ("cancelled", "cancelled")

    with transaction(db_url) as session:
        late = complete_job(session, run, Usage(10, 10), {"clusters": []}, [])

    assert (late.job_ids, late.status) == ([job_id], "cancelled")
    with transaction(db_url) as session:
        job = session.get(Job, job_id)
        assert (job.status, job.credits_charged, job.result) == ("cancelled", 1, None)
        assert "while the provider answered" in job.error_message
        assert balances(session, account_id) == (999, 0)
    assert_audit_clean(db_url)


def test_a_late_answer_the_account_cannot_cover_is_recorded_unbilled(db_url: str) -> None:
    account_id, job_id, run = _expired_run(db_url, credits=10)
    with transaction(db_url) as session:
        ledger.grant(session, account_id, -10, "adjustment", "spent elsewhere")
    with transaction(db_url) as session:
        assert not complete_job(session, run, Usage(10, 10), {}, [])
        assert session.get(Job, job_id).status == "failed"
        assert hold_of(session, job_id).status == "expired"
        assert balances(session, account_id) == (0, 0)
        row = session.scalar(select(UnbilledUsage).where(UnbilledUsage.job_id == job_id))
        assert (row.reason, row.credits, row.tokens_in) == ("expired_uncovered", 1, 10)
        assert unbilled.totals(session)["count"] == 1
    assert_audit_clean(db_url)


# --- reading -----------------------------------------------------------------------------


def test_list_jobs_pages_newest_first_and_filters(db_url: str) -> None:
    account_id = new_account(db_url)
    ids = [submitted(db_url, account_id, IMAGES) for _ in range(5)]
    with transaction(db_url) as session:
        runs.cancel_job(session, account_id, ids[0])
        first = job_views.list_jobs(session, account_id, limit=3)
        page, cursor = first.rows, first.next_cursor
        assert [j.id for j in page] == ids[::-1][:3]
        assert cursor is not None
        second = job_views.list_jobs(session, account_id, cursor=cursor, limit=3)
        rest, end = second.rows, second.next_cursor
        assert [j.id for j in rest] == ids[::-1][3:]
        assert end is None
        cancelled = job_views.list_jobs(session, account_id, status="cancelled").rows
        assert [j.id for j in cancelled] == [ids[0]]
        for bad in ({"status": "lost"}, {"operation": "x"}, {"limit": 0}, {"cursor": "!!"}):
            with pytest.raises(InvalidInput):
                job_views.list_jobs(session, account_id, **bad)


def test_the_submitted_job_is_the_row_as_written_and_a_change_to_it_is_saved(
    db_url: str,
) -> None:
    """The job row is written by one Core INSERT; the object handed back is the session's
    own, with every column as stored (reading it emits nothing)."""
    with transaction(db_url) as session:
        account_id = make_account(session, credits=1_000).id
    with transaction(db_url) as session:
        job = submit_job(session, session.get(Account, account_id), request(IMAGES), TTL).job
        with statements_of(db_url) as statements:
            seen = {attr.key: getattr(job, attr.key) for attr in inspect(Job).column_attrs}
        assert statements == []
        job.automation_id = "auto_x"
        job_id = job.id
    with session_factory(db_url)() as fresh:
        stored = fresh.get(Job, job_id)
        assert stored is not None
        assert stored.automation_id == "auto_x"
        for key, value in seen.items():
            if key not in {"automation_id", "dispatched_at", "sent_at"}:  # admission sets these
                assert _as_stored(getattr(stored, key)) == _as_stored(value), key
        assert stored.dispatched_at is not None


def _as_stored(value: object) -> object:
    """SQLite hands datetimes back naive (UTC as written)."""
    return as_utc(value) if isinstance(value, datetime) else value
