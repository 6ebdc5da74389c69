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

import redis
from sqlalchemy.orm import Session

from billing import lifecycle, webhooks
from billing.jobs import sweep_expired_holds as release_expired_holds
from models import utcnow
from models.db import transaction
from settings import get_settings
from tasks.dispatch import enqueue_webhooks
from workers.celery_app import celery

log = logging.getLogger(__name__)

# A delivery this far past due with nobody holding it lost its message: send it again.
WEBHOOK_REQUEUE_GRACE = timedelta(seconds=30)


@dataclass(frozen=True)
class Outcome:
    summary: str
    deliveries: list[str] = field(default_factory=list)


def _trial_expiry(session: Session, now: datetime) -> Outcome:
    warn_before = timedelta(days=get_settings().trial_warning_days)
    report = lifecycle.expire_trials(session, now, warn_before)
    return Outcome(
        f"{len(report.accounts)} account(s) suspended, {len(report.warned)} warned",
        report.deliveries,
    )


def _ahrefs_reset(session: Session, now: datetime) -> Outcome:
    report = lifecycle.roll_over_periods(session, now)
    return Outcome(
        f"{len(report.accounts)} period(s) rolled over, Ahrefs usage reset", report.deliveries
    )


def _renewal(session: Session, now: datetime) -> Outcome:
    report = lifecycle.renew_credits(session, now)
    return Outcome(f"{len(report.accounts)} account(s) renewed", report.deliveries)


def _sweep(session: Session, now: datetime) -> Outcome:
    swept = release_expired_holds(session, now)
    queued = [webhooks.queue_job_event(session, job_id, now) for job_id in swept]
    if swept:
        log.warning("released %d expired holds: %s", len(swept), swept[:20])
    return Outcome(f"{len(swept)} expired hold(s) released", [d for d in queued if d])


def _webhook_requeue(session: Session, now: datetime) -> Outcome:
    due = webhooks.overdue_delivery_ids(session, now, WEBHOOK_REQUEUE_GRACE)
    return Outcome(f"{len(due)} overdue webhook deliveries requeued", due)


JOBS: dict[str, Callable[[Session, datetime], Outcome]] = {
    "trial-expiry": _trial_expiry,
    "ahrefs-reset": _ahrefs_reset,
    "renewal": _renewal,
    "sweep": _sweep,
    "webhooks": _webhook_requeue,
}


def run_periodic(name: str, now: datetime | None = None) -> str:
    """Run one periodic job as of `now` (default: the current time); its summary."""
    with transaction() as session:
        outcome = JOBS[name](session, now or utcnow())
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


@celery.task(name="tasks.periodic.sweep_expired_holds", ignore_result=True)
def sweep_expired_holds() -> str:
    """Release holds past expiry and fail their jobs (every minute)."""
    return run_guarded("sweep", ttl=300)


@celery.task(name="tasks.periodic.requeue_webhooks", ignore_result=True)
def requeue_webhooks() -> str:
    """Send deliveries whose message was lost or whose wait outlived a countdown."""
    return run_guarded("webhooks", ttl=300)


@celery.task(name="tasks.periodic.expire_trials", ignore_result=True)
def expire_trials() -> str:
    return run_guarded("trial-expiry", ttl=1800)


@celery.task(name="tasks.periodic.reset_ahrefs_usage", ignore_result=True)
def reset_ahrefs_usage() -> str:
    return run_guarded("ahrefs-reset", ttl=1800)


@celery.task(name="tasks.periodic.renew_credits", ignore_result=True)
def renew_credits() -> str:
    return run_guarded("renewal", ttl=1800)
