"""Celery task metrics from Celery's signals (names and labels as celery-exporter's),
and a worker's own scrape port when its samples are not shared through a directory."""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any

from celery import Task
from celery.signals import (
    after_task_publish,
    task_failure,
    task_postrun,
    task_prerun,
    task_received,
    task_retry,
    task_success,
    worker_ready,
)
from prometheus_client import start_http_server

import metrics
from billing.runs import Ending, JobRun
from models import utcnow

log = logging.getLogger(__name__)
HOSTNAME = socket.gethostname()
_started: dict[str, float] = {}


def _name(task: Task | None) -> str:
    return getattr(task, "name", None) or "unknown"


@after_task_publish.connect
def _sent(sender: str | None = None, **_: Any) -> None:
    metrics.CELERY_TASK_SENT.labels(sender or "unknown", HOSTNAME).inc()


@task_received.connect
def _received(request: Any = None, **_: Any) -> None:
    metrics.CELERY_TASK_RECEIVED.labels(getattr(request, "name", "unknown"), HOSTNAME).inc()


@task_prerun.connect
def _started_task(task_id: str, task: Task, **_: Any) -> None:
    _started[task_id] = time.monotonic()
    metrics.CELERY_TASK_STARTED.labels(_name(task), HOSTNAME).inc()


@task_success.connect
def _succeeded(sender: Task | None = None, **_: Any) -> None:
    metrics.CELERY_TASK_SUCCEEDED.labels(_name(sender), HOSTNAME).inc()


@task_failure.connect
def _failed(sender: Task | None = None, exception: BaseException | None = None, **_: Any) -> None:
    kind = type(exception).__name__ if exception is not None else "unknown"
    metrics.CELERY_TASK_FAILED.labels(_name(sender), HOSTNAME, kind).inc()


@task_retry.connect
def _retried(sender: Task | None = None, **_: Any) -> None:
    metrics.CELERY_TASK_RETRIED.labels(_name(sender), HOSTNAME).inc()


@task_postrun.connect
def _runtime(task_id: str, task: Task, **_: Any) -> None:
    started = _started.pop(task_id, None)
    if started is not None:
        metrics.CELERY_TASK_RUNTIME.labels(_name(task), HOSTNAME).observe(
            time.monotonic() - started
        )


def record_run(run: JobRun, ending: Ending, started: float) -> None:
    """A job run that ended: its final status, duration, queue wait and charge."""
    operation = run.operation
    metrics.JOBS_FINISHED.labels(operation, ending.status).inc()
    metrics.JOB_DURATION.labels(operation).observe(time.monotonic() - started)
    if ending.credits_charged:
        metrics.CREDITS_CHARGED.labels(operation, run.model).inc(ending.credits_charged)
        metrics.COST_USD.labels(run.model).inc(float(ending.cost_usd))


def record_start(run: JobRun) -> float:
    """A job run that started; the moment it did (for `record_run`)."""
    metrics.JOBS_STARTED.labels(run.operation).inc()
    if run.submitted_at is not None:
        waited = (utcnow() - run.submitted_at).total_seconds()
        metrics.JOB_QUEUE_WAIT.labels(run.operation).observe(max(waited, 0.0))
    return time.monotonic()


@worker_ready.connect
def _serve_metrics(**_: Any) -> None:
    """`WORKER_METRICS_PORT`: this worker's samples on their own port. A prefork pool's
    children count in their own processes, so their samples are only complete through
    `PROMETHEUS_MULTIPROC_DIR`, which this port then serves aggregated."""
    port = os.environ.get("WORKER_METRICS_PORT")
    if port:
        try:
            start_http_server(
                int(port),
                addr=os.environ.get("WORKER_METRICS_ADDR", "127.0.0.1"),
                registry=metrics.scrape_registry(),
            )
        except OSError as exc:
            log.error("worker metrics port %s unavailable: %s", port, exc)
            return
        log.info("worker metrics on port %s", port)
