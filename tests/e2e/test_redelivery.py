"""Exactly-once settlement under redelivery: a worker SIGKILLed mid-job, and the same
task message delivered twice. Real Redis, real worker processes, real provider HTTP.

A job's run is alive while its worker heart-beats: a redelivered message takes the job
over only once the heartbeat is stale, and a duplicate for a live run is skipped."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from celery import Celery
from sqlalchemy import func, select

from billing import accounts
from billing.audit import audit
from billing.submission import JobRequest, submit_job
from models import CreditTransaction, CreditUsageLog, Job
from models.db import transaction
from tests.support import Worker

pytestmark = pytest.mark.e2e

# Short windows so redelivery happens within seconds: the broker gives an unacked message
# back after 6 s, and a run without a heartbeat for 3 s is dead.
FAST_REDELIVERY = {
    "BROKER_VISIBILITY_TIMEOUT": "6",
    "HOLD_TTL_SECONDS": "120",
    "BROKER_RESTORE_INTERVAL": "1",
    "HEARTBEAT_INTERVAL_SECONDS": "1",
    "HEARTBEAT_STALE_SECONDS": "3",
}


@pytest.fixture
def private_broker(env: dict[str, str], redis_server: Any) -> Iterator[str]:
    """A Redis database of its own, so the suite's shared worker never sees these tasks."""
    import redis

    url = redis_server.url.rsplit("/", 1)[0] + "/7"
    redis.Redis.from_url(url).flushdb()
    yield url
    redis.Redis.from_url(url).flushdb()


def _submit(title: str) -> str:
    with transaction() as session:
        registration = accounts.register(session, f"{title}@example.com", "long enough", "", 14)
        return submit_job(
            session,
            registration.account,
            JobRequest(operation="content_generation", input={"title": title, "word_count": 200}),
            timedelta(minutes=2),
        ).job.id


def _send(broker: str, job_id: str) -> None:
    """Publish with the project's routing (celeryconfig) to the private broker.

    An explicit connection, because CELERY_BROKER_URL in the environment would win over
    any broker_url set on the app.
    """
    app = Celery()
    app.config_from_object("celeryconfig")
    with app.connection_for_write(broker) as connection:
        app.send_task("tasks.content_generation", args=[job_id], connection=connection)


def _job(job_id: str) -> Job:
    with transaction() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def _wait(predicate: Any, timeout: float, what: str, worker: Worker | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            log = "".join(worker.output[-40:]) if worker else ""
            raise AssertionError(f"timed out waiting for {what}\n{log}")
        time.sleep(0.1)


def _ledger_for(job_id: str) -> tuple[int, int, list[str]]:
    with transaction() as session:
        deductions = session.scalar(
            select(func.count()).where(
                CreditTransaction.job_id == job_id, CreditTransaction.type == "deduction"
            )
        )
        logs = session.scalar(select(func.count()).where(CreditUsageLog.job_id == job_id))
        return deductions or 0, logs or 0, audit(session)


def test_worker_killed_mid_job_is_redelivered_and_settles_once(
    env: dict[str, str], private_broker: str, sim_control: Any
) -> None:
    worker_env = {
        **env,
        **FAST_REDELIVERY,
        "CELERY_BROKER_URL": private_broker,
        "REDIS_URL": private_broker,
    }
    job_id = _submit("sigkill-window")
    sim_control.post(
        "/_sim/faults", json={"latency_ms": 4000, "times": 1, "match": "sigkill-window"}
    )
    first = Worker(worker_env).start()
    try:
        _send(private_broker, job_id)
        _wait(
            lambda: sim_control.get("/_sim/stats").json()["requests"]["chat"] == 1,
            20,
            "the provider call to start",
            first,
        )
        assert _job(job_id).status == "running"
        first.stop(signal.SIGKILL)
    finally:
        first.stop()
    assert _job(job_id).status == "running"

    second = Worker(worker_env).start()
    try:
        _wait(
            lambda: _job(job_id).status == "succeeded", 60, "the redelivered job to finish", second
        )
    finally:
        second.stop()

    job = _job(job_id)
    assert job.attempts == 2
    assert 0 < job.credits_charged <= job.reserved_credits
    assert _ledger_for(job_id) == (1, 1, [])


def test_same_message_delivered_twice_concurrently_runs_once(
    env: dict[str, str], private_broker: str, sim_control: Any
) -> None:
    worker_env = {**env, "CELERY_BROKER_URL": private_broker, "REDIS_URL": private_broker}
    job_id = _submit("double-delivery")
    sim_control.post(
        "/_sim/faults", json={"latency_ms": 1500, "times": 2, "match": "double-delivery"}
    )
    worker = Worker(worker_env).start()
    try:
        _send(private_broker, job_id)
        _send(private_broker, job_id)
        _wait(lambda: _job(job_id).status == "succeeded", 20, "the job to finish", worker)
        _wait(lambda: "skipped" in "".join(worker.output), 10, "the duplicate to be skipped")
    finally:
        worker.stop()

    # The second delivery found the run alive (fresh heartbeat) and did nothing.
    assert _job(job_id).attempts == 1
    assert sim_control.get("/_sim/stats").json()["requests"]["chat"] == 1
    assert _ledger_for(job_id) == (1, 1, [])
