"""Prometheus metrics of every process: the API, the workers and beat.

Counters and histograms are updated where things happen (a job submitted, a task run, a
provider call, a webhook attempt). Gauges that the database or the broker already know
(credits held, open holds, the oldest hold, jobs waiting, queue lengths) are read at
scrape time by `StateCollector`, so they are never stale and never double-counted.

Processes: with `PROMETHEUS_MULTIPROC_DIR` set (`make run` sets it), every process on the
host writes its samples there and the API's `GET /metrics` serves them all (gunicorn
workers, Celery workers, beat). Without it, each process keeps its own registry: the API
serves its own, and a worker serves its own on `WORKER_METRICS_PORT` when that is set
(one scrape target per worker container). Celery task metrics carry celery-exporter's
names and labels, so its dashboards and alerts apply.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)
AI_SECONDS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)

# --- jobs (API and workers) --------------------------------------------------------------
JOBS_SUBMITTED = Counter(
    "aijobs_jobs_submitted_total", "Jobs accepted by the API", ["operation", "plan"]
)
AUTOMATIONS_SUBMITTED = Counter(
    "aijobs_automations_submitted_total", "Automation runs accepted by the API", ["plan"]
)
JOBS_STARTED = Counter("aijobs_jobs_started_total", "Job runs started by a worker", ["operation"])
JOBS_FINISHED = Counter(
    "aijobs_jobs_finished_total", "Jobs that reached a final state", ["operation", "status"]
)
JOB_DURATION = Histogram(
    "aijobs_job_duration_seconds", "From start to final state", ["operation"], buckets=AI_SECONDS
)
JOB_QUEUE_WAIT = Histogram(
    "aijobs_job_queue_wait_seconds", "From submission to start", ["operation"], buckets=AI_SECONDS
)
CREDITS_CHARGED = Counter(
    "aijobs_credits_charged_total", "Credits posted by settles", ["operation", "model"]
)
COST_USD = Counter("aijobs_cost_usd_total", "Provider cost of settled work, USD", ["model"])

# --- the AI provider (workers) ------------------------------------------------------------
PROVIDER_CALLS = Counter(
    "aijobs_provider_calls_total", "Provider calls by outcome", ["model", "outcome"]
)
PROVIDER_LATENCY = Histogram(
    "aijobs_provider_latency_seconds", "One provider HTTP call", ["model"], buckets=AI_SECONDS
)
PROVIDER_TOKENS = Counter(
    "aijobs_provider_tokens_total", "Tokens the provider reported", ["model", "direction"]
)
PROVIDER_RETRIES = Counter("aijobs_provider_retries_total", "Provider call retries", ["model"])

# --- webhooks, throttling, healing ---------------------------------------------------------
WEBHOOK_DELIVERIES = Counter(
    "aijobs_webhook_deliveries_total", "Webhook attempts by outcome", ["outcome"]
)
WEBHOOK_DEFERRALS = Counter(
    "aijobs_webhook_deferrals_total",
    "Webhook deliveries parked, unsent, because their endpoint had no free slot",
)
RATE_LIMITED = Counter("aijobs_rate_limited_total", "Requests refused with 429", ["endpoint"])
HTTP_RESPONSES = Counter(
    "aijobs_http_responses_total", "API responses", ["method", "endpoint", "status"]
)
RECONCILER_ACTIONS = Counter(
    "aijobs_reconciler_actions_total", "Jobs the reconciler re-sent or ended", ["action"]
)

# --- Celery tasks, with celery-exporter's names and labels ---------------------------------
_TASK = ["name", "hostname"]
CELERY_TASK_SENT = Counter("celery_task_sent_total", "Task messages published", _TASK)
CELERY_TASK_RECEIVED = Counter("celery_task_received_total", "Tasks received by a worker", _TASK)
CELERY_TASK_STARTED = Counter("celery_task_started_total", "Tasks started", _TASK)
CELERY_TASK_SUCCEEDED = Counter("celery_task_succeeded_total", "Tasks that returned", _TASK)
CELERY_TASK_FAILED = Counter("celery_task_failed_total", "Tasks that raised", [*_TASK, "exception"])
CELERY_TASK_RETRIED = Counter("celery_task_retried_total", "Tasks retried", _TASK)
CELERY_TASK_REJECTED = Counter("celery_task_rejected_total", "Tasks rejected", _TASK)
CELERY_TASK_RUNTIME = Histogram(
    "celery_task_runtime", "Task run time, seconds", _TASK, buckets=AI_SECONDS
)

StateReader = Callable[[], Iterable[GaugeMetricFamily]]


class StateCollector(Collector):
    """Gauges read from the database and the broker at scrape time (`reader` does the
    reading; a failure there is reported as `aijobs_state_up 0`, never as a scrape error)."""

    def __init__(self, reader: StateReader) -> None:
        self.reader = reader

    def collect(self) -> Iterable[Any]:
        up = GaugeMetricFamily("aijobs_state_up", "Whether the state gauges could be read")
        try:
            families = list(self.reader())
        except Exception:
            log.exception("metrics: could not read the state gauges")
            up.add_metric([], 0)
            return [up]
        up.add_metric([], 1)
        return [*families, up]

    def describe(self) -> Iterable[Any]:
        return []


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def scrape_registry() -> CollectorRegistry:
    """This process's samples, or in multiprocess mode those of every process."""
    if not multiprocess_dir():
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


def exposition(state: StateReader | None = None) -> tuple[bytes, str]:
    """The text a scrape gets: `scrape_registry`'s samples, plus the state gauges when
    `state` is given."""
    body = generate_latest(scrape_registry())
    if state is not None:
        extra = CollectorRegistry()
        extra.register(StateCollector(state))
        body += generate_latest(extra)
    return body, CONTENT_TYPE_LATEST


def mark_process_dead(pid: int) -> None:
    """Gunicorn's `child_exit` hook: a dead worker's live gauges leave the totals."""
    if multiprocess_dir():
        multiprocess.mark_process_dead(pid)
