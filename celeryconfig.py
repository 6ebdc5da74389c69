"""Celery settings: broker, queues and routes, delivery guarantees, beat schedule."""

from __future__ import annotations

from kombu import Exchange, Queue

from billing.operations import OPERATIONS
from settings import get_settings

_settings = get_settings()

# AI jobs wait on the network: the threads pool keeps hundreds in flight per process
# (WORKER_POOL, WORKER_CONCURRENCY). It has no task time limits; the provider call is
# bounded by the openai client's timeout and tenacity's deadline (workers/provider.py).
worker_pool = _settings.worker_pool
worker_concurrency = _settings.worker_concurrency
_prefork = worker_pool == "prefork"

if _prefork and not (
    _settings.task_soft_time_limit
    < _settings.task_time_limit
    < _settings.visibility_timeout
    < _settings.hold_ttl_seconds
):
    raise RuntimeError(
        "time limits must nest: TASK_SOFT_TIME_LIMIT < TASK_TIME_LIMIT < "
        "BROKER_VISIBILITY_TIMEOUT < HOLD_TTL_SECONDS"
    )
# A live job must never look dead: several heartbeats fit in the stale threshold, which
# itself is well inside a hold's lifetime (the sweeper expires only silent jobs).
if not (
    2 * _settings.heartbeat_interval_seconds
    <= _settings.heartbeat_stale_seconds
    < _settings.hold_ttl_seconds
):
    raise RuntimeError(
        "heartbeats must nest: 2 x HEARTBEAT_INTERVAL_SECONDS <= HEARTBEAT_STALE_SECONDS "
        "< HOLD_TTL_SECONDS"
    )

broker_url = _settings.broker_url
broker_connection_retry_on_startup = True
# Above the longest task, so a running task is never handed to a second worker.
# Unacked messages of a dead worker are scanned for every interval (kombu's default
# scans only every 10th interval, i.e. 100 s).
broker_transport_options = {
    "visibility_timeout": _settings.visibility_timeout,
    "unacked_restore_interval": _settings.broker_restore_interval,
    "unacked_restore_throttle": 1,
}

task_serializer = "json"
accept_content = ["json"]
task_ignore_result = True
result_backend = None

# Ack after the task ran; a worker that dies mid-task gets its message redelivered.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
# Only a process pool can stop a task; running threads finish and settle in the database.
worker_cancel_long_running_tasks_on_connection_loss = _prefork
task_soft_time_limit = _settings.task_soft_time_limit
task_time_limit = _settings.task_time_limit

QUEUES = ("text", "image", "webhooks", "default")
task_default_queue = "default"
task_default_exchange = "default"
task_default_routing_key = "default"
# Each queue on its own direct exchange and key: a message lands in exactly one queue.
task_queues = [Queue(name, Exchange(name, type="direct"), routing_key=name) for name in QUEUES]
# Routes name the queue only: Celery then publishes to the default exchange with the
# queue's name as the key, which kombu's Redis transport turns into one LPUSH on that
# queue. Naming the exchange costs a second round trip per message (SMEMBERS of the
# exchange's bindings, never cached).
task_routes = {f"tasks.{op.name}": {"queue": op.queue} for op in OPERATIONS.values()} | {
    "tasks.webhooks.deliver": {"queue": "webhooks"}
}
imports = [f"tasks.{name}" for name in OPERATIONS] + ["tasks.periodic", "tasks.webhooks"]

worker_hijack_root_logger = False
worker_send_task_events = True
# No `task-sent` event: it was a second Redis round trip on every submission. Flower
# lists a task from the worker's `task-received` on; what waits in the queues is on
# Flower's Broker page and in /metrics (`celery_queue_length`, `aijobs_jobs{status=
# "queued"}`), and `celery_task_sent_total` counts publishes in-process.
task_send_sent_event = False

# Every periodic task is idempotent per period and lock-guarded (tasks/periodic.py), so
# a tick that comes early, late or twice changes nothing; hourly keeps period changes
# within the hour of their boundary.
_sweep_every = _settings.sweep_interval_seconds
_lifecycle_every = _settings.lifecycle_interval_seconds
beat_schedule = {
    "sweep-expired-holds": {
        "task": "tasks.periodic.sweep_expired_holds",
        "schedule": _sweep_every,
    },
    "requeue-webhooks": {"task": "tasks.periodic.requeue_webhooks", "schedule": _sweep_every},
    "reconcile-jobs": {
        "task": "tasks.periodic.reconcile_jobs",
        "schedule": _settings.reconcile_interval_seconds,
    },
    "expire-trials": {"task": "tasks.periodic.expire_trials", "schedule": _lifecycle_every},
    "reset-ahrefs-usage": {
        "task": "tasks.periodic.reset_ahrefs_usage",
        "schedule": _lifecycle_every,
    },
    "renew-credits": {"task": "tasks.periodic.renew_credits", "schedule": _lifecycle_every},
}
