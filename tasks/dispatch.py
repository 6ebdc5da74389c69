"""Enqueueing, by task name: the API needs no worker code, only the routing."""

from __future__ import annotations

from billing.operations import OPERATIONS
from workers.celery_app import celery


def enqueue_job(job_id: str, operation: str) -> None:
    """Routing comes from `celeryconfig.task_routes` (one queue per operation kind)."""
    if operation not in OPERATIONS:
        raise ValueError(f"unknown operation {operation!r}")
    celery.send_task(f"tasks.{operation}", args=[job_id])
