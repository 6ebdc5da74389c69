"""Enqueueing, by task name: the API needs no worker code, only the routing."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import logs
from billing.operations import OPERATIONS
from workers.celery_app import celery

log = logging.getLogger(__name__)
DELIVER_WEBHOOK = "tasks.webhooks.deliver"


def enqueue_job(job_id: str, operation: str) -> None:
    """Routing comes from `celeryconfig.task_routes` (one queue per operation kind)."""
    if operation not in OPERATIONS:
        raise ValueError(f"unknown operation {operation!r}")
    celery.send_task(f"tasks.{operation}", args=[job_id], headers=_log_headers())


def _log_headers() -> dict[str, str]:
    """The request id travels with the task, so the worker's lines carry it too."""
    request_id = logs.current().get("request_id")
    return {"request_id": request_id} if request_id else {}


def enqueue_webhooks(delivery_ids: Iterable[str | None], countdown: float | None = None) -> None:
    """After commit: hand deliveries to the `webhooks` queue. Never raises: the delivery
    rows are already committed, and the periodic requeue sends any whose message was
    lost here (broker down), so a failure is only logged."""
    for delivery_id in delivery_ids:
        if delivery_id is None:
            continue
        try:
            celery.send_task(DELIVER_WEBHOOK, args=[delivery_id], countdown=countdown)
        except Exception:
            log.exception("could not enqueue webhook delivery %s; the sweep will", delivery_id)
