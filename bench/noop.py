"""The baseline task for `bench.e2e_throughput`: a Celery task that only INCRs a counter.

It runs on the project's Celery app (same broker, acks_late, prefetch and event
settings as the AI tasks), so `pipeline / baseline` isolates what the API, the
ledger, the database and the provider round trip add on top of Celery itself.
The worker loads it with `--include bench.noop`.
"""

from __future__ import annotations

from functools import cache

import redis

from settings import get_settings
from workers.celery_app import celery

COUNTER_KEY = "bench:noop:count"
QUEUE = "bench"
TASK_NAME = "bench.noop"


@cache
def _redis() -> redis.Redis:
    """One client per (forked) worker process, made on first use."""
    return redis.Redis.from_url(get_settings().redis_url)


@celery.task(name=TASK_NAME, acks_late=True, ignore_result=True)
def noop() -> int:
    """Count one delivery."""
    count: int = _redis().incr(COUNTER_KEY)  # type: ignore[assignment]
    return count
