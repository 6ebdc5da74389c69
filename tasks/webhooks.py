"""Webhook delivery on the `webhooks` queue: claim an attempt, send it, record it,
schedule the retry. The rules live in `billing.webhooks`, the HTTP in `workers.webhooks`."""

from __future__ import annotations

import logging
from datetime import timedelta

import logs
import metrics
from billing import webhooks
from models import utcnow
from models.db import transaction
from settings import get_settings
from workers import webhook_slots
from workers.celery_app import celery
from workers.dispatch import DELIVER_WEBHOOK, enqueue_webhooks
from workers.webhook_slots import PARK_SECONDS
from workers.webhooks import send

log = logging.getLogger(__name__)


@celery.task(
    name=DELIVER_WEBHOOK,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    soft_time_limit=60,
    time_limit=90,
)
def deliver(delivery_id: str) -> str:
    """One attempt of one delivery; a duplicate or early message finds no claim and
    does nothing, so at most one attempt runs at a time per delivery. The time limits
    above do nothing on the threads pool: the send's own deadline bounds an attempt.

    The attempt first takes one of its account's slots at its endpoint
    (WEBHOOK_MAX_PER_ENDPOINT) and only then its claim; with them all taken it is parked,
    unsent and unclaimed, until an attempt of that account there gives a slot back
    (workers/webhook_slots.py)."""
    settings = get_settings()
    with transaction() as session:
        destination = webhooks.claimable_destination(session, delivery_id, utcnow())
    if destination is None:
        return "skipped"
    url, tenant = destination
    slot = webhook_slots.take_for(url, tenant, settings)
    if slot is None:
        # Not due until woken (or, its wake-up lost, until the requeue finds it), then
        # parked and slot asked for again in one step: a slot freed meanwhile finds it.
        with transaction() as session:
            if not webhooks.defer_attempt(session, delivery_id, utcnow(), PARK_SECONDS):
                return "skipped"
        slot = webhook_slots.take_for(url, tenant, settings, park=delivery_id)
        if slot is None:
            metrics.WEBHOOK_DEFERRALS.inc()
            log.info("webhook %s: its endpoint is busy, parked", delivery_id)
            return "deferred"
        _wake(delivery_id, send_now=False)
    try:
        return _attempt(delivery_id)
    finally:
        give_back(slot)


def give_back(slot: webhook_slots.Slot) -> None:
    """The slot back to its endpoint, and the account's delivery parked longest there sent. An
    entry that wakes nothing (a delivery parked twice, the requeue having sent it after
    PARK_SECONDS, and sent since) does not use up the freed slot: the next one is woken."""
    parked = webhook_slots.release(slot)
    while parked is not None and not _wake(parked):
        parked = webhook_slots.next_parked(slot)


def _wake(delivery_id: str, *, send_now: bool = True) -> bool:
    """A parked delivery is due again; sent unless the caller sends it itself. False if
    it was no longer waiting."""
    with transaction() as session:
        woken = webhooks.wake(session, delivery_id, utcnow())
    if woken and send_now:
        enqueue_webhooks([delivery_id])
    return woken


def _attempt(delivery_id: str) -> str:
    settings = get_settings()
    deadline = settings.webhook_timeout_seconds
    with transaction() as session:
        outgoing = webhooks.claim_attempt(
            session,
            delivery_id,
            utcnow(),
            lease=webhooks.attempt_lease(deadline),
            grace=timedelta(seconds=settings.webhook_secret_grace_seconds),
            schedule=settings.webhook_retry_schedule,
        )
    if outgoing is None:
        return "skipped"
    logs.bind(account_id=outgoing.account_id, job_id=outgoing.job_id)
    result = send(outgoing, timeout=deadline, allow_private=settings.webhook_allow_private_urls)
    with transaction() as session:
        recorded = webhooks.record_attempt(
            session,
            delivery_id,
            outgoing.claim,
            result,
            utcnow(),
            settings.webhook_retry_schedule,
        )
    outcome = result.status_code if result.status_code is not None else result.error
    metrics.WEBHOOK_DELIVERIES.labels(recorded.outcome).inc()
    if recorded.outcome == "stale":
        log.warning("webhook %s: %s, after its claim ran out: logged only", delivery_id, outcome)
        return "stale"
    delay = recorded.retry_in
    if delay is None:
        log.info("webhook %s: %s, done", delivery_id, outcome)
        return "done"
    log.info("webhook %s: %s, retry in %.1fs", delivery_id, outcome, delay)
    # Long waits are left to the periodic requeue: a broker countdown beyond the
    # visibility timeout would be redelivered (and held in memory) again and again.
    if delay <= settings.visibility_timeout / 2:
        enqueue_webhooks([delivery_id], countdown=delay)
    return "retry"
