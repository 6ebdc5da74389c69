"""The reconciler (billing/reconciliation.py): dead runs are sent again, or ended when
cancelled or out of attempts; dispatched jobs whose message is gone are sent again;
accounts with free slots get their waiting jobs. Each job at most once per threshold."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import select, update

from billing import plans, reconciliation, runs
from billing.audit import audit
from billing.runs import start_job
from models import CreditReservation, Job, utcnow
from models.db import transaction
from tests.factories import IMAGE, balances, catalog_restored, make_account, request, submit

POLICY = reconciliation.Policy(
    heartbeat_stale=timedelta(seconds=45), dispatch_stale=timedelta(seconds=45), max_attempts=3
)


def jobs_for(url: str, n: int, plan: str = "starter") -> tuple[str, list[str]]:
    with transaction(url) as session:
        account = make_account(session, plan_slug=plan, credits=1000)
        return account.id, [submit(session, account.id, request(IMAGE)).id for _ in range(n)]


def hold_amount(session: Any, job_id: str) -> int:
    return int(
        session.scalar(select(CreditReservation.amount).where(CreditReservation.job_id == job_id))
    )


def reconcile(
    url: str, minutes: float, in_broker: dict[str, int] | set[str] | None = None
) -> reconciliation.Reconciled:
    """`in_broker`: the job ids the broker's messages carry, or per-queue counts only."""
    seen = (
        reconciliation.InBroker(job_ids=frozenset(in_broker))
        if isinstance(in_broker, set)
        else reconciliation.InBroker(counts=in_broker or {})
    )
    with transaction(url) as session:
        return reconciliation.reconcile(
            session, utcnow() + timedelta(minutes=minutes), POLICY, seen
        )


def test_a_run_whose_worker_stopped_heart_beating_is_sent_again_once(db_url: str) -> None:
    _, (job_id,) = jobs_for(db_url, 1)
    with transaction(db_url) as session:
        assert start_job(session, job_id) is not None

    assert reconcile(db_url, 0, {"image": 0}).resent == []  # heartbeat fresh
    done = reconcile(db_url, 2, {"image": 0})
    assert [d.job_id for d in done.resent] == [job_id]
    assert reconcile(db_url, 2.1, {"image": 0}).resent == []  # sent again just now
    assert [d.job_id for d in reconcile(db_url, 4, {"image": 0}).resent] == [job_id]
    with transaction(db_url) as session:
        # The new message takes the dead run over.
        later = utcnow() + timedelta(minutes=4)
        run = start_job(session, job_id, now=later, stale_after=POLICY.heartbeat_stale)
        assert run is not None
        assert run.attempts == 2


def test_a_dead_run_whose_cancel_was_requested_ends_cancelled(db_url: str) -> None:
    account_id, ids = jobs_for(db_url, 6)  # starter: 5 slots, the 6th waits
    with transaction(db_url) as session:
        assert start_job(session, ids[0]) is not None
        runs.cancel_job(session, account_id, ids[0])

    done = reconcile(db_url, 2)
    assert [e.job_ids for e in done.endings] == [[ids[0]]]
    assert ids[5] in [d.job_id for d in done.dispatches]  # the slot it freed
    with transaction(db_url) as session:
        job = session.get(Job, ids[0])
        assert (job.status, job.credits_charged) == ("cancelled", 0)
        hold = session.scalar(
            select(CreditReservation.status).where(CreditReservation.job_id == ids[0])
        )
        assert hold == "released"
        assert audit(session) == []


def test_a_job_that_lost_too_many_runs_fails_uncharged(db_url: str) -> None:
    _, (job_id,) = jobs_for(db_url, 1)
    with transaction(db_url) as session:
        assert start_job(session, job_id) is not None
        session.execute(update(Job).where(Job.id == job_id).values(attempts=POLICY.max_attempts))
    reconcile(db_url, 2)
    with transaction(db_url) as session:
        job = session.get(Job, job_id)
        assert (job.status, job.error_code) == ("failed", "worker_lost")
        assert audit(session) == []


def test_dispatched_jobs_whose_messages_are_gone_are_sent_again(db_url: str) -> None:
    account_id, ids = jobs_for(db_url, 5)
    with transaction(db_url) as session:
        for job_id in ids[:2]:  # their messages stay in the queue until a worker skips them
            runs.cancel_job(session, account_id, job_id)

    # Five messages for three live jobs: by count nothing is missing; one of the three
    # is, and only its message is sent again.
    assert reconcile(db_url, 0.5, set(ids[:2] + ids[3:])).resent == []  # not stale yet
    assert [d.job_id for d in reconcile(db_url, 2, set(ids[:2] + ids[3:])).resent] == [ids[2]]
    assert reconcile(db_url, 2.1, set(ids[:2] + ids[3:])).resent == []  # sent just now
    # Redis restarted empty: the others too, the first one again past the threshold.
    assert [d.job_id for d in reconcile(db_url, 2.2, set()).resent] == ids[3:]
    assert [d.job_id for d in reconcile(db_url, 2.9, set()).resent] == [ids[2]]


def test_by_count_only_the_oldest_dispatched_jobs_beyond_the_queue_are_sent_again(
    db_url: str,
) -> None:
    _, ids = jobs_for(db_url, 3)
    assert reconcile(db_url, 0.5, {"image": 0}).resent == []  # not stale yet
    # All three messages still in the queue: nothing is missing.
    assert reconcile(db_url, 2, {"image": 3}).resent == []
    # One message left: the two oldest jobs lost theirs.
    assert [d.job_id for d in reconcile(db_url, 2, {"image": 1}).resent] == ids[:2]
    # The broker restarted empty: the last one too (the others were sent just now).
    assert [d.job_id for d in reconcile(db_url, 2.1, {"image": 0}).resent] == ids[2:]


def test_by_count_a_lost_message_is_found_when_more_jobs_wait_than_one_scan_reads(
    db_url: str, monkeypatch: Any
) -> None:
    """The scan reads the oldest SCAN_LIMIT dispatched jobs; the queue's length is
    compared with all of them, not with those it read."""
    _, ids = jobs_for(db_url, 3)
    monkeypatch.setattr(reconciliation, "SCAN_LIMIT", 2)
    # Two messages for three dispatched jobs: the oldest lost its message.
    assert [d.job_id for d in reconcile(db_url, 2, {"image": 2}).resent] == ids[:1]
    assert reconcile(db_url, 2.1, {"image": 3}).resent == []


def test_waiting_jobs_get_the_slots_of_a_raised_cap(db_url: str) -> None:
    with catalog_restored(db_url):
        _, ids = jobs_for(db_url, 4, plan="free-trial")
        with transaction(db_url) as session:
            plans.update_plan(session, "free-trial", {"max_concurrent_jobs": 3})
        done = reconcile(db_url, 0)
    assert [d.job_id for d in done.admitted] == [ids[2]]
    assert done.summary() == "0 job(s) sent again, 0 dead job(s) ended, 1 waiting job(s) admitted"


def test_jobs_waiting_in_the_broker_keep_their_holds_until_the_maximum_queue_age(
    db_url: str,
) -> None:
    """The image worker crash-loops for a day: dispatched jobs of several accounts (each
    at its cap, more waiting for a slot) wait in the broker. The reconciler re-sends the
    messages it finds missing, and the hold sweeper (HOLD_TTL 15 min) leaves every hold
    alone until the maximum queue age; then the dispatched ones fail with
    `queue_timeout`, uncharged, and the waiting ones get their slots."""
    hold_ttl, max_queue = timedelta(minutes=15), timedelta(hours=24)
    accounts = [jobs_for(db_url, 3, plan="free-trial") for _ in range(3)]  # 2 slots each
    dispatched = sorted(job_id for _, ids in accounts for job_id in ids[:2])
    waiting = sorted(ids[2] for _, ids in accounts)
    for hours in (0.5, 1, 6, 23.9):
        now = utcnow() + timedelta(hours=hours)
        done = reconcile(db_url, hours * 60, {"image": 0})
        assert sorted(d.job_id for d in done.resent) == dispatched
        with transaction(db_url) as session:
            assert runs.sweep_expired_holds(session, now, hold_ttl, max_queue).job_ids == []

    with transaction(db_url) as session:
        swept = runs.sweep_expired_holds(
            session, utcnow() + timedelta(hours=25), hold_ttl, max_queue
        )
    assert sorted(swept.job_ids) == dispatched
    assert sorted(d.job_id for d in swept.dispatches) == waiting
    with transaction(db_url) as session:
        ended = session.execute(
            select(Job.status, Job.error_code, CreditReservation.status)
            .join(CreditReservation, CreditReservation.job_id == Job.id)
            .where(Job.id.in_(dispatched))
        ).all()
        assert set(ended) == {("failed", "queue_timeout", "expired")}
        for account_id, ids in accounts:
            assert session.get(Job, ids[2]).status == "queued"
            assert balances(session, account_id)[1] == hold_amount(session, ids[2])
        assert audit(session) == []
