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
from workers.celery_app import celery
from workers.dispatch import DELIVER_WEBHOOK, enqueue_webhooks
from workers.webhook_slots import defer_seconds, endpoint_slot
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

    The attempt first takes a slot at its endpoint (WEBHOOK_MAX_PER_ENDPOINT) and only
    then its claim; with the endpoint full it is put back unsent and unclaimed."""
    settings = get_settings()
    with transaction() as session:
        url = webhooks.claimable_url(session, delivery_id, utcnow())
    if url is None:
        return "skipped"
    with endpoint_slot(url, settings) as admitted:
        if not admitted:
            return _defer(delivery_id)
        return _attempt(delivery_id)


def _defer(delivery_id: str) -> str:
    delay = defer_seconds()
    with transaction() as session:
        deferred = webhooks.defer_attempt(session, delivery_id, utcnow(), delay)
    if not deferred:
        return "skipped"
    metrics.WEBHOOK_DEFERRALS.inc()
    log.info("webhook %s: its endpoint is busy, try again in %.1fs", delivery_id, delay)
    enqueue_webhooks([delivery_id], countdown=delay)
    return "deferred"


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
