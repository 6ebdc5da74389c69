"""The one Celery app, configured from `celeryconfig.py`."""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import worker_process_init

from models.db import dispose_engines

celery = Celery("aijobs")
celery.config_from_object("celeryconfig")


@worker_process_init.connect
def _fresh_connections_after_fork(**_: Any) -> None:
    """A forked child must not reuse the parent's pooled DB connections."""
    dispose_engines()
