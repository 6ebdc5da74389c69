"""The periodic jobs as beat and the CLI run them: frozen-clock runs, two processes on
the same period (one effect), the Redis lock, and the beat schedule itself."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client import REGISTRY
from sqlalchemy import func, select

from billing import accounts, webhooks
from billing.audit import audit
from billing.runs import start_job
from billing.submission import JobRequest, submit_job
from billing.webhook_urls import UrlPolicy
from models import (
    Account,
    AccountEvent,
    CreditTransaction,
    Job,
    PeriodRun,
    Plan,
    WebhookDelivery,
    utcnow,
)
from models.db import transaction
from tasks import periodic
from tests.tasks import periodic_child

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2027, 3, 31, 0, 0, 30, tzinfo=UTC)
# A period that rolled over from Jan 31: it ends on Mar 31, 30 s before NOW.
PERIOD_START, PERIOD_END = datetime(2027, 2, 28, tzinfo=UTC), datetime(2027, 3, 31, tzinfo=UTC)


@pytest.fixture
def sent(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Deliveries handed to the broker after each run's commit."""
    ids: list[str] = []
    monkeypatch.setattr(
        "tasks.periodic.enqueue_webhooks", lambda batch: ids.extend(d for d in batch if d)
    )
    return ids


def seed_accounts(count: int) -> None:
    """`count` each of: active starter accounts whose period ends just before NOW, and
    trials that ended just before NOW."""
    with transaction() as session:
        starter = session.scalar(select(Plan).where(Plan.slug == "starter"))
        trial = session.scalar(select(Plan).where(Plan.slug == "free-trial"))
        for n in range(count):
            paid = Account(
                name=f"paid {n}",
                plan=starter,
                status="active",
                period_start=PERIOD_START,
                period_end=PERIOD_END,
                usage_ahrefs_queries=n,
            )
            expiring = Account(
                name=f"trial {n}",
                plan=trial,
                status="trial",
                trial_ends_at=NOW - timedelta(seconds=10),
            )
            session.add_all([paid, expiring])
        session.flush()


def count(model: Any, *where: Any) -> int:
    with transaction() as session:
        return session.scalar(select(func.count()).select_from(model).where(*where)) or 0


def audit_clean() -> None:
    with transaction() as session:
        assert audit(session) == []


def test_each_job_runs_as_of_a_given_instant(sent: list[str]) -> None:
    seed_accounts(3)

    assert periodic.run_periodic("renewal", NOW - timedelta(minutes=1)) == "0 account(s) renewed"
    assert periodic.run_periodic("trial-expiry", NOW - timedelta(minutes=1)) == (
        "0 account(s) suspended, 3 warned"
    )
    assert periodic.run_periodic("ahrefs-reset", NOW) == (
        "3 period(s) rolled over, Ahrefs usage reset"
    )
    assert periodic.run_periodic("renewal", NOW) == "3 account(s) renewed"
    assert periodic.run_periodic("trial-expiry", NOW) == "3 account(s) suspended, 0 warned"
    for job in ("renewal", "trial-expiry", "ahrefs-reset"):  # the same period again
        assert periodic.run_periodic(job, NOW + timedelta(minutes=5)).startswith("0 ")

    assert count(CreditTransaction, CreditTransaction.type == "renewal") == 3
    assert count(Account, Account.status == "suspended") == 3
    assert count(Account, Account.usage_ahrefs_queries > 0) == 0
    assert sent == []  # no account has an endpoint
    audit_clean()


def seed_expired_jobs(count: int) -> None:
    """`count` dispatched jobs (with webhook URLs), one per account so each holds a slot,
    that by NOW have waited longer than JOB_MAX_QUEUE_SECONDS with no worker starting
    them."""
    with transaction() as session:
        for n in range(count):
            email = f"holds{n}@example.com"
            account = accounts.register(session, email, "long enough", "", 14).account
            submit_job(
                session,
                account,
                JobRequest(
                    operation="clustering",
                    input={"keywords": [f"kw {n}", "b"]},
                    webhook_url="https://hooks.example.com/in",
                ),
                timedelta(minutes=15),
            )


EFFECTS = {
    "renewal": lambda: count(CreditTransaction, CreditTransaction.type == "renewal"),
    "trial-expiry": lambda: count(AccountEvent, AccountEvent.type == "status_changed"),
    "ahrefs-reset": lambda: count(AccountEvent, AccountEvent.type == "period_started"),
    "sweep": lambda: count(WebhookDelivery, WebhookDelivery.event_type == "job.failed"),
}


@pytest.mark.parametrize("job", list(EFFECTS))
def test_two_processes_running_the_same_period_at_once_have_one_effect(
    env: dict[str, str], job: str
) -> None:
    """Two beats (or a beat and a person) start the same period's run at the same
    moment, with no Redis lock between them: the period keys alone keep it single."""
    accounts_each = 15
    seed_accounts(accounts_each)
    if job == "sweep":
        seed_expired_jobs(accounts_each)
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    children = [
        ctx.Process(
            target=periodic_child.run_periodic_in_process,
            args=(env, job, NOW.isoformat(), barrier, results),
        )
        for _ in range(2)
    ]
    for child in children:
        child.start()
    summaries = [results.get(timeout=60) for _ in children]
    for child in children:
        child.join(30)

    assert [child.exitcode for child in children] == [0, 0], summaries
    changed = [int(summary.split(" ")[0]) for summary in summaries]
    assert sorted(changed) == [0, accounts_each], summaries
    assert EFFECTS[job]() == accounts_each
    if job == "sweep":
        assert count(Job, Job.error_code == "queue_timeout") == accounts_each
    audit_clean()


def test_the_cli_runs_a_period_once_however_often_it_is_started(env: dict[str, str]) -> None:
    seed_accounts(5)
    command = [sys.executable, "-m", "ops", "periodic", "renewal", "--now", NOW.isoformat()]

    runs = [
        subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for _ in range(2)
    ]
    outputs = sorted(run.communicate(timeout=60)[0].decode().strip() for run in runs)

    assert [run.returncode for run in runs] == [0, 0], outputs
    assert outputs == [
        "periodic renewal: 0 account(s) renewed",
        "periodic renewal: 5 account(s) renewed",
    ]
    assert EFFECTS["renewal"]() == 5
    assert count(PeriodRun) == 10  # a rollover and a renewal per account
    audit_clean()


@pytest.mark.parametrize("command", ["sweep", "periodic renewal"])
def test_a_bad_now_is_a_usage_error_that_changes_nothing(
    env: dict[str, str], command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from ops.cli import main

    with pytest.raises(SystemExit) as exited:
        main([*command.split(), "--now", "next tuesday"])

    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert "'next tuesday' is not an ISO-8601 instant" in error
    assert "Traceback" not in error
    assert count(PeriodRun) == 0


def test_the_sweep_releases_expired_holds_and_announces_the_failures(sent: list[str]) -> None:
    """A dispatched job no worker took keeps its hold past HOLD_TTL_SECONDS (it only
    waits); past JOB_MAX_QUEUE_SECONDS (default 24 h) it fails with `queue_timeout`."""
    with transaction() as session:
        account = accounts.register(session, "sweep@example.com", "long enough", "", 14).account
        job = submit_job(
            session,
            account,
            JobRequest(
                operation="clustering",
                input={"keywords": ["a", "b"]},
                webhook_url="https://hooks.example.com/in",
            ),
            timedelta(minutes=15),
            url_policy=UrlPolicy(),
        ).job

    for waited in (timedelta(0), timedelta(hours=1), timedelta(hours=23)):
        summary = periodic.run_periodic("sweep", utcnow() + waited)
        assert summary == "0 expired hold(s) released"
    summary = periodic.run_periodic("sweep", utcnow() + timedelta(hours=25))

    assert summary == "1 expired hold(s) released"
    with transaction() as session:
        failed = session.get(Job, job.id)
        assert failed is not None
        assert (failed.status, failed.error_code) == ("failed", "queue_timeout")
        delivery = session.scalar(select(WebhookDelivery).where(WebhookDelivery.job_id == job.id))
        assert delivery is not None
        assert delivery.event_type == "job.failed"
    assert sent == [delivery.id]
    audit_clean()


def test_the_sweep_counts_each_reason_under_its_own_metric_label(
    sent: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A silent worker (`hold_expired`) and work no worker took (`queue_timeout`) call
    for different fixes at 3 a.m., so the metric tells them apart."""
    monkeypatch.setenv("HOLD_TTL_SECONDS", "600")
    monkeypatch.setenv("JOB_MAX_QUEUE_SECONDS", "3600")
    with transaction() as session:
        account = accounts.register(session, "labels@example.com", "long enough", "", 14).account
        ids = [
            submit_job(
                session,
                account,
                JobRequest(operation="clustering", input={"keywords": ["a", "b"]}),
                timedelta(minutes=10),
            ).job.id
            for _ in range(2)
        ]
    with transaction() as session:
        assert start_job(session, ids[0]) is not None  # its worker dies at once

    def swept(reason: str) -> float:
        value = REGISTRY.get_sample_value("aijobs_reconciler_actions_total", {"action": reason})
        return value or 0.0

    before = {reason: swept(reason) for reason in ("hold_expired", "queue_timeout")}
    assert periodic.run_periodic("sweep", utcnow() + timedelta(hours=2)) == (
        "2 expired hold(s) released"
    )

    assert swept("hold_expired") - before["hold_expired"] == 1
    assert swept("queue_timeout") - before["queue_timeout"] == 1
    audit_clean()


def test_the_maximum_queue_age_is_read_from_the_settings(
    sent: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOB_MAX_QUEUE_SECONDS", str(2 * 3600))
    with transaction() as session:
        account = accounts.register(session, "queue@example.com", "long enough", "", 14).account
        job = submit_job(
            session,
            account,
            JobRequest(operation="clustering", input={"keywords": ["a", "b"]}),
            timedelta(minutes=15),
        ).job

    assert periodic.run_periodic("sweep", utcnow() + timedelta(hours=1)) == (
        "0 expired hold(s) released"
    )
    assert periodic.run_periodic("sweep", utcnow() + timedelta(hours=3)) == (
        "1 expired hold(s) released"
    )
    with transaction() as session:
        failed = session.get(Job, job.id)
        assert failed is not None
        assert (failed.error_code, failed.error_message) == (
            "queue_timeout",
            "The job waited 3 hours without a worker; nothing was charged.",
        )
    audit_clean()


def test_lost_webhook_messages_are_requeued(sent: list[str]) -> None:
    seed_accounts(1)
    with transaction() as session:
        account = session.scalar(select(Account).where(Account.status == "active"))
        assert account is not None
        account.webhook_url = "https://hooks.example.com/in"
        delivery_id = webhooks.queue_account_event(
            session, account, "account.trial_ending", {}, utcnow()
        )

    assert periodic.run_periodic("webhooks", utcnow()) == ("0 overdue webhook deliveries requeued")
    later = utcnow() + timedelta(minutes=1)
    assert periodic.run_periodic("webhooks", later) == "1 overdue webhook deliveries requeued"
    assert sent == [delivery_id]


def test_an_overlapping_beat_run_is_skipped_while_the_lock_is_held(env: dict[str, str]) -> None:
    client = redis.Redis.from_url(env["REDIS_URL"])
    held = client.lock("aijobs:periodic:renewal", timeout=30)
    assert held.acquire(blocking=False)
    try:
        assert periodic.renew_credits.run() == "skipped"
    finally:
        held.release()
        client.close()

    assert periodic.renew_credits.run() == "0 account(s) renewed"


def test_beat_schedules_every_periodic_task_and_webhooks_have_their_queue() -> None:
    import celeryconfig
    import tasks.webhooks  # noqa: F401 - registers the delivery task
    from workers.celery_app import celery

    scheduled = {entry["task"]: entry["schedule"] for entry in celeryconfig.beat_schedule.values()}
    assert scheduled == {
        "tasks.periodic.sweep_expired_holds": 60.0,
        "tasks.periodic.requeue_webhooks": 60.0,
        "tasks.periodic.reconcile_jobs": 60.0,
        "tasks.periodic.expire_trials": 3600.0,
        "tasks.periodic.reset_ahrefs_usage": 3600.0,
        "tasks.periodic.renew_credits": 3600.0,
    }
    assert set(scheduled) <= set(celery.tasks)
    assert celeryconfig.task_routes["tasks.webhooks.deliver"]["queue"] == "webhooks"
    assert "tasks.webhooks.deliver" in celery.tasks
    assert celery.tasks["tasks.webhooks.deliver"].acks_late
