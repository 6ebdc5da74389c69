"""The one Celery app, configured from `celeryconfig.py`."""

from __future__ import annotations

from typing import Any

from celery import Celery, Task
from celery.signals import setup_logging, task_postrun, task_prerun, worker_process_init

import logs
from billing.operations import OPERATIONS
from models.db import dispose_engines
from workers import task_metrics  # noqa: F401 - connects the metric signal handlers

celery = Celery("aijobs")
celery.config_from_object("celeryconfig")


@setup_logging.connect
def _our_logging(**_: Any) -> None:
    """Celery's own lines go through the same handler and format as ours."""
    logs.configure()


@task_prerun.connect
def _bind_task_ids(task: Task, args: tuple[Any, ...] | None = None, **_: Any) -> None:
    """Each task's lines carry the request that sent it and the job or delivery it is for."""
    logs.clear()
    logs.bind(request_id=getattr(task.request, "request_id", None))
    operation = task.name.removeprefix("tasks.")
    if operation in OPERATIONS and args:
        logs.bind(job_id=args[0], operation=operation)
    elif task.name == "tasks.webhooks.deliver" and args:
        logs.bind(delivery_id=args[0])


@task_postrun.connect
def _unbind_task_ids(**_: Any) -> None:
    logs.clear()


@worker_process_init.connect
def _fresh_connections_after_fork(**_: Any) -> None:
    """A forked child must not reuse the parent's pooled DB connections."""
    dispose_engines()
