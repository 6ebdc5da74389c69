"""A run's start gate and its endings (billing/runs.py): a live run is never taken over,
a dead one is; usage the provider reported is billed whatever the outcome; a cancel
requested while the job ran ends it `cancelled`, paying only for reported usage."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from billing import runs
from billing.audit import audit
from billing.pricing import Usage
from billing.runs import Outcome, finish_run, start_job
from models import CreditUsageLog, Job, UnbilledUsage, utcnow
from models.db import transaction
from tests.factories import CLUSTERING, balances, make_account, request, submit

STALE = timedelta(seconds=45)


def started(url: str, credits: int = 10_000) -> tuple[str, runs.JobRun]:
    with transaction(url) as session:
        account = make_account(session, credits=credits)
        job_id = submit(session, account.id, request(CLUSTERING)).id
    with transaction(url) as session:
        run = start_job(session, job_id, stale_after=STALE)
    assert run is not None
    return account.id, run


def job(url: str, job_id: str) -> Job:
    with transaction(url) as session:
        row = session.get(Job, job_id)
        assert row is not None
        return row


def usage_log(url: str, job_id: str) -> CreditUsageLog | None:
    with transaction(url) as session:
        return session.scalar(select(CreditUsageLog).where(CreditUsageLog.job_id == job_id))


def audit_clean(url: str) -> None:
    with transaction(url) as session:
        assert audit(session) == []


def test_a_live_run_is_not_taken_over_and_a_dead_one_is(db_url: str) -> None:
    _, run = started(db_url)
    now = utcnow()
    with transaction(db_url) as session:
        assert start_job(session, run.job_id, now=now, stale_after=STALE) is None
    with transaction(db_url) as session:
        later = now + STALE + timedelta(seconds=1)
        again = start_job(session, run.job_id, now=later, stale_after=STALE)
    assert again is not None
    assert again.attempts == 2


def test_heartbeats_keep_a_run_alive_and_report_cancels(db_url: str) -> None:
    account_id, run = started(db_url)
    later = utcnow() + timedelta(minutes=5)
    with transaction(db_url) as session:
        assert runs.record_heartbeats(session, [run.job_id], later) == []
    with transaction(db_url) as session:
        # Alive at `later`: not taken over just after it.
        assert (
            start_job(session, run.job_id, now=later + timedelta(seconds=1), stale_after=STALE)
            is None
        )
        runs.cancel_job(session, account_id, run.job_id)
    with transaction(db_url) as session:
        assert runs.record_heartbeats(session, [run.job_id, "job_gone"], later) == [
            run.job_id,
            "job_gone",
        ]


@pytest.mark.parametrize(
    ("finish_reason", "tokens_out"), [("cut off at the output limit", 400), ("bad JSON", 37)]
)
def test_a_failure_after_the_answer_pays_its_usage_capped_at_the_hold(
    db_url: str, finish_reason: str, tokens_out: int
) -> None:
    account_id, run = started(db_url)
    outcome = Outcome(Usage(200, tokens_out), error=("invalid_output", finish_reason))
    with transaction(db_url) as session:
        ending = finish_run(session, run, outcome)
    assert ending.status == "failed"
    ended = job(db_url, run.job_id)
    assert ended.error_code == "invalid_output"
    assert f"charged: {ended.credits_charged} credits" in (ended.error_message or "")
    assert 0 < ended.credits_charged <= run.hold
    log = usage_log(db_url, run.job_id)
    assert log is not None
    assert (log.outcome, log.credits, log.tokens_out) == (
        "failed",
        ended.credits_charged,
        tokens_out,
    )
    with transaction(db_url) as session:
        assert balances(session, account_id) == (10_000 - ended.credits_charged, 0)
    audit_clean(db_url)


def test_a_huge_usage_is_capped_at_the_hold(db_url: str) -> None:
    _, run = started(db_url)
    with transaction(db_url) as session:
        finish_run(session, run, Outcome(Usage(10**6, 10**6), error=("invalid_output", "long")))
    assert job(db_url, run.job_id).credits_charged == run.hold
    audit_clean(db_url)


def test_a_failure_where_the_provider_billed_nothing_charges_nothing(db_url: str) -> None:
    account_id, run = started(db_url)
    with transaction(db_url) as session:
        finish_run(session, run, Outcome(error=("provider_unavailable", "500 x3")))
    ended = job(db_url, run.job_id)
    assert (ended.status, ended.credits_charged) == ("failed", 0)
    assert "Nothing was charged." in (ended.error_message or "")
    assert usage_log(db_url, run.job_id) is None
    with transaction(db_url) as session:
        assert balances(session, account_id) == (10_000, 0)
    audit_clean(db_url)


def test_our_own_failure_after_the_answer_is_recorded_not_charged(db_url: str) -> None:
    _, run = started(db_url)
    outcome = Outcome(Usage(100, 50), error=("internal_error", "bug"), billable=False)
    with transaction(db_url) as session:
        finish_run(session, run, outcome)
        row = session.scalar(select(UnbilledUsage).where(UnbilledUsage.job_id == run.job_id))
    assert job(db_url, run.job_id).credits_charged == 0
    assert row is not None
    assert (row.reason, row.tokens_in, row.tokens_out) == ("internal_error", 100, 50)
    audit_clean(db_url)


@pytest.mark.parametrize("answered", [False, True])
def test_a_cancel_requested_while_running_wins_at_the_next_safe_point(
    db_url: str, answered: bool
) -> None:
    account_id, run = started(db_url)
    with transaction(db_url) as session:
        runs.cancel_job(session, account_id, run.job_id)
    outcome = Outcome(Usage(300, 120), {"clusters": []}) if answered else Outcome()
    with transaction(db_url) as session:
        ending = finish_run(session, run, outcome)
    assert ending.status == "cancelled"
    ended: Any = job(db_url, run.job_id)
    assert (ended.status, ended.error_code, ended.result) == ("cancelled", "cancelled", None)
    if answered:
        assert "while the provider answered" in ended.error_message
        assert 0 < ended.credits_charged <= run.hold
        log = usage_log(db_url, run.job_id)
        assert log is not None
        assert log.outcome == "cancelled"
    else:
        assert "before the provider answered" in ended.error_message
        assert ended.credits_charged == 0
        assert usage_log(db_url, run.job_id) is None
    with transaction(db_url) as session:
        assert balances(session, account_id) == (10_000 - ended.credits_charged, 0)
    audit_clean(db_url)


def test_a_second_run_finishing_after_the_first_is_recorded_unbilled(db_url: str) -> None:
    _, run = started(db_url)
    with transaction(db_url) as session:
        assert finish_run(session, run, Outcome(Usage(10, 10), {"clusters": []}))
    with transaction(db_url) as session:
        assert not finish_run(session, run, Outcome(Usage(10, 10), {"clusters": []}))
        reasons = list(session.scalars(select(UnbilledUsage.reason)))
    assert reasons == ["duplicate_run"]
    assert job(db_url, run.job_id).credits_charged == 1
    audit_clean(db_url)
