"""Enqueueing, by task name: the API needs no worker code, only the routing."""

from __future__ import annotations

from billing.operations import OPERATIONS
from workers.celery_app import celery


def enqueue_job(job_id: str, operation: str) -> None:
    queue = OPERATIONS[operation].queue
    celery.send_task(f"tasks.{operation}", args=[job_id], queue=queue)
