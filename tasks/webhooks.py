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
    does nothing, so at most one attempt runs at a time per delivery."""
    settings = get_settings()
    timeout = settings.webhook_timeout_seconds
    with transaction() as session:
        outgoing = webhooks.claim_attempt(
            session,
            delivery_id,
            utcnow(),
            lease=timedelta(seconds=2 * timeout + 60),
            grace=timedelta(seconds=settings.webhook_secret_grace_seconds),
        )
    if outgoing is None:
        return "skipped"
    logs.bind(account_id=outgoing.account_id, job_id=outgoing.job_id)
    result = send(outgoing, timeout=timeout, allow_private=settings.webhook_allow_private_urls)
    with transaction() as session:
        delay = webhooks.record_attempt(
            session, delivery_id, result, utcnow(), settings.webhook_retry_schedule
        )
    outcome = result.status_code if result.status_code is not None else result.error
    counted = "delivered" if result.ok else "retrying" if delay is not None else "given_up"
    metrics.WEBHOOK_DELIVERIES.labels(counted).inc()
    if delay is None:
        log.info("webhook %s: %s, done", delivery_id, outcome)
        return "done"
    log.info("webhook %s: %s, retry in %.1fs", delivery_id, outcome, delay)
    # Long waits are left to the periodic requeue: a broker countdown beyond the
    # visibility timeout would be redelivered (and held in memory) again and again.
    if delay <= settings.visibility_timeout / 2:
        enqueue_webhooks([delivery_id], countdown=delay)
    return "retry"
