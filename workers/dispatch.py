"""Enqueueing, by task name: the API needs no worker code, only the routing."""

from __future__ import annotations

import base64
import functools
import json
import logging
from collections.abc import Iterable, Iterator

from kombu.transport import redis as kombu_redis

import logs
from billing.admission import Dispatch
from billing.operations import OPERATIONS
from billing.reconciliation import InBroker
from billing.runs import Ending
from workers.celery_app import celery
from workers.publisher import TaskPublisher

log = logging.getLogger(__name__)
DELIVER_WEBHOOK = "tasks.webhooks.deliver"
JOB_QUEUES = tuple(dict.fromkeys(op.queue for op in OPERATIONS.values()))
# Messages read per LRANGE when the reconciler lists the job queues.
BROKER_PAGE = 1000


def enqueue_job(job_id: str, operation: str) -> None:
    """Routing comes from `celeryconfig.task_routes` (one queue per operation kind); one
    LPUSH on a Redis broker (workers/publisher.py)."""
    if operation not in OPERATIONS:
        raise ValueError(f"unknown operation {operation!r}")
    _publisher().send(f"tasks.{operation}", [job_id], _log_headers())


@functools.cache
def _publisher() -> TaskPublisher:
    return TaskPublisher(celery)


def _log_headers() -> dict[str, str]:
    """The request id travels with the task, so the worker's lines carry it too."""
    request_id = logs.current().get("request_id")
    return {"request_id": request_id} if request_id else {}


def enqueue_dispatches(dispatches: Iterable[Dispatch]) -> None:
    """After commit: send admitted jobs to the broker. Never raises: the jobs hold their
    slots in the database, and the reconciler re-sends any whose message was lost here."""
    for dispatch in dispatches:
        try:
            enqueue_job(dispatch.job_id, dispatch.operation)
        except Exception:
            log.exception("could not enqueue job %s; the reconciler will", dispatch.job_id)


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


def send_ending(ending: Ending) -> None:
    """After the commit of a job's ending: the jobs admitted into the freed slots, then
    the webhook events."""
    enqueue_dispatches(ending.dispatches)
    enqueue_webhooks(ending.deliveries)


def jobs_in_broker() -> InBroker:
    """What waits in the AI queues, for the reconciler: on kombu's Redis transport the job
    id of every message (all priority levels); otherwise how many per queue."""
    with celery.connection_for_read() as connection:
        channel = connection.default_channel
        if isinstance(channel, kombu_redis.Channel):
            # Under a `global_keyprefix` kombu prefixes LLEN's key but not LRANGE's:
            # there, counts (LLEN of every priority level; 0 for a queue never used).
            if channel.global_keyprefix:
                return InBroker(counts={queue: int(channel._size(queue)) for queue in JOB_QUEUES})
            return InBroker(job_ids=frozenset(_waiting_job_ids(channel)))
        counts = {
            queue: int(channel.queue_declare(queue=queue, passive=True).message_count)
            for queue in JOB_QUEUES
        }
        return InBroker(counts=counts)


def _waiting_job_ids(channel: kombu_redis.Channel) -> Iterator[str]:
    """Read a page at a time from the head: publishers push there, so a message pushed
    meanwhile moves the rest further on (read twice at worst) and none is skipped."""
    with channel.conn_or_acquire() as client:
        for queue in JOB_QUEUES:
            for priority in channel.priority_steps:
                key = channel._q_for_pri(queue, priority)
                start = 0
                while page := client.lrange(key, start, start + BROKER_PAGE - 1):
                    yield from filter(None, map(job_id_of, page))
                    start += len(page)


def job_id_of(raw: bytes | str) -> str | None:
    """The job a task message in a job queue is for (its first argument); None for what
    cannot be one, which the reconciler then does not count for any job."""
    try:
        message = json.loads(raw)
        body = message["body"]
        if message["properties"].get("body_encoding") == "base64":
            body = base64.b64decode(body)
        job_id = json.loads(body)[0][0]
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return None
    return job_id if isinstance(job_id, str) else None
