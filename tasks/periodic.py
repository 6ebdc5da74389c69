"""Periodic work run by Celery beat (schedule in `celeryconfig.py`), also runnable by
hand for any instant: `python -m ops periodic <name> --now ISO`.

Each job is one transaction calling one `billing` function; the webhooks it queued
are sent after commit. Beat runs are guarded by a Redis lock so a slow run and the
next tick (or a second beat) do not pile up; correctness does not depend on the lock,
because every effect is once-only in the database (`billing.lifecycle`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import redis
from sqlalchemy.orm import Session

import metrics
from billing import lifecycle, reconciliation, webhooks
from billing.admission import Dispatch
from billing.runs import error_codes
from billing.runs import sweep_expired_holds as release_expired_holds
from models import utcnow
from models.db import transaction
from settings import get_settings
from workers.celery_app import celery
from workers.dispatch import enqueue_dispatches, enqueue_webhooks, jobs_in_broker

log = logging.getLogger(__name__)

# A delivery this far past due with nobody holding it lost its message: send it again.
WEBHOOK_REQUEUE_GRACE = timedelta(seconds=30)


@dataclass(frozen=True)
class PeriodicReport:
    summary: str
    deliveries: list[str] = field(default_factory=list)
    dispatches: list[Dispatch] = field(default_factory=list)


def _trial_expiry(session: Session, now: datetime) -> PeriodicReport:
    warn_before = timedelta(days=get_settings().trial_warning_days)
    report = lifecycle.expire_trials(session, now, warn_before)
    return PeriodicReport(
        f"{len(report.accounts)} account(s) suspended, {len(report.warned)} warned",
        report.deliveries,
    )


def _ahrefs_reset(session: Session, now: datetime) -> PeriodicReport:
    report = lifecycle.roll_over_periods(session, now)
    return PeriodicReport(
        f"{len(report.accounts)} period(s) rolled over, Ahrefs usage reset", report.deliveries
    )


def _renewal(session: Session, now: datetime) -> PeriodicReport:
    report = lifecycle.renew_credits(session, now)
    return PeriodicReport(f"{len(report.accounts)} account(s) renewed", report.deliveries)


def _sweep(session: Session, now: datetime) -> PeriodicReport:
    settings = get_settings()
    hold_ttl = timedelta(seconds=settings.hold_ttl_seconds)
    max_queue_age = timedelta(seconds=settings.job_max_queue_seconds)
    swept = release_expired_holds(session, now, hold_ttl, max_queue_age)
    if swept:
        log.warning("released %d expired holds: %s", len(swept.job_ids), swept.job_ids[:20])
        # hold_expired (a silent worker) or queue_timeout (no worker took it): two alerts.
        for code, count in error_codes(session, swept.job_ids).items():
            metrics.RECONCILER_ACTIONS.labels(code).inc(count)
    return PeriodicReport(
        f"{len(swept.job_ids)} expired hold(s) released", swept.deliveries, swept.dispatches
    )


def _reconcile(session: Session, now: datetime) -> PeriodicReport:
    settings = get_settings()
    policy = reconciliation.Policy(
        heartbeat_stale=timedelta(seconds=settings.heartbeat_stale_seconds),
        dispatch_stale=timedelta(seconds=settings.dispatch_stale_seconds),
        max_attempts=settings.job_max_attempts,
    )
    try:
        in_broker = jobs_in_broker()
    except Exception:
        # Unknown: every stale dispatched job is sent again (duplicates are harmless).
        log.warning("reconcile: broker queues unreadable", exc_info=True)
        in_broker = reconciliation.InBroker()
    done = reconciliation.reconcile(session, now, policy, in_broker)
    for action, count in (
        ("sent_again", len(done.resent)),
        ("ended_dead", sum(len(ending.job_ids) for ending in done.endings)),
        ("admitted", len(done.admitted)),
    ):
        metrics.RECONCILER_ACTIONS.labels(action).inc(count)
    if done.resent:
        log.warning("reconcile: sent again: %s", [d.job_id for d in done.resent][:20])
    return PeriodicReport(done.summary(), done.deliveries, done.dispatches)


def _webhook_requeue(session: Session, now: datetime) -> PeriodicReport:
    due = webhooks.overdue_delivery_ids(session, now, WEBHOOK_REQUEUE_GRACE)
    return PeriodicReport(f"{len(due)} overdue webhook deliveries requeued", due)


JOBS: dict[str, Callable[[Session, datetime], PeriodicReport]] = {
    "trial-expiry": _trial_expiry,
    "ahrefs-reset": _ahrefs_reset,
    "renewal": _renewal,
    "sweep": _sweep,
    "webhooks": _webhook_requeue,
    "reconcile": _reconcile,
}


def run_periodic(name: str, now: datetime | None = None) -> str:
    """Run one periodic job as of `now` (default: the current time); its summary."""
    with transaction() as session:
        outcome = JOBS[name](session, now or utcnow())
    enqueue_dispatches(outcome.dispatches)
    enqueue_webhooks(outcome.deliveries)
    log.info("periodic %s: %s", name, outcome.summary)
    return outcome.summary


@contextmanager
def redis_lock(name: str, ttl: float) -> Iterator[bool]:
    """Yields whether this process holds `name`'s lock (never waits for it). The TTL
    frees it if the holder dies; a run outliving its TTL is still safe, only not
    exclusive."""
    client = redis.Redis.from_url(get_settings().redis_url)
    lock = client.lock(f"aijobs:periodic:{name}", timeout=ttl, blocking=False)
    acquired = lock.acquire()
    try:
        yield acquired
    finally:
        if acquired:
            try:
                lock.release()
            except redis.exceptions.LockError:
                log.warning("periodic %s: lock expired before the run ended", name)
        client.close()


def run_guarded(name: str, ttl: float) -> str:
    with redis_lock(name, ttl) as acquired:
        if not acquired:
            log.info("periodic %s: skipped, a previous run still holds the lock", name)
            return "skipped"
        return run_periodic(name)


def beat_task(name: str, job: str, lock_ttl: float) -> Any:
    """The Celery task `name` that beat sends: one lock-guarded run of `job`."""

    def run() -> str:
        return run_guarded(job, ttl=lock_ttl)

    return celery.task(name=name, ignore_result=True)(run)


sweep_expired_holds = beat_task("tasks.periodic.sweep_expired_holds", "sweep", 300)
requeue_webhooks = beat_task("tasks.periodic.requeue_webhooks", "webhooks", 300)
reconcile_jobs = beat_task("tasks.periodic.reconcile_jobs", "reconcile", 300)
expire_trials = beat_task("tasks.periodic.expire_trials", "trial-expiry", 1800)
reset_ahrefs_usage = beat_task("tasks.periodic.reset_ahrefs_usage", "ahrefs-reset", 1800)
renew_credits = beat_task("tasks.periodic.renew_credits", "renewal", 1800)
