"""Periodic work run by Celery beat (schedule in `celeryconfig.py`)."""

from __future__ import annotations

import logging

from billing.jobs import sweep_expired_holds as sweep
from models import utcnow
from models.db import transaction
from workers.celery_app import celery

log = logging.getLogger(__name__)


@celery.task(name="tasks.periodic.sweep_expired_holds", ignore_result=True)
def sweep_expired_holds() -> int:
    """Release holds past expiry and fail their jobs; idempotent, safe to overlap."""
    with transaction() as session:
        swept = sweep(session, utcnow())
    if swept:
        log.warning("released %d expired holds: %s", len(swept), swept[:20])
    return len(swept)
