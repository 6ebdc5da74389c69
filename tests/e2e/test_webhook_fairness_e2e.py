"""Webhook fairness end to end: API -> job worker -> a real webhooks worker with a few
threads -> real receivers. Tenant A's receiver is slow (each answer takes most of the
attempt's deadline) and A has a backlog of events; tenant B's receiver is fast. With the
per-endpoint cap, A holds at most WEBHOOK_MAX_PER_ENDPOINT of the worker's threads, so
B's events arrive within seconds while A's backlog is still being worked through; and
every event of both arrives exactly once, in one attempt (a deferral uses none)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import Worker, auth, register, wait_for_job
from tests.webhook_receiver import Receiver, Reply

pytestmark = pytest.mark.e2e
IMAGE_JOB = {"operation": "image_generation", "input": {"prompt": "a lighthouse", "count": 1}}
THREADS, CAP = 4, 2
SLOW_ANSWER, DEADLINE = 1.0, 2
A_EVENTS, B_EVENTS = 16, 3
# Without the cap, B's events queue behind A's: (A_EVENTS - those sent already) x
# SLOW_ANSWER / THREADS, some 4 s; with it, B's wait is one short job and one send.
B_BOUND = 2.0


@pytest.fixture(scope="module")
def few_threads(worker_env: dict[str, str]) -> Iterator[Worker]:
    """The only worker on the `webhooks` queue: THREADS threads, a short deadline."""
    env = {
        **worker_env,
        "WEBHOOK_ALLOW_PRIVATE_URLS": "1",
        "WEBHOOK_TIMEOUT_SECONDS": str(DEADLINE),
        "WEBHOOK_MAX_PER_ENDPOINT": str(CAP),
        "WEBHOOK_RETRY_SCHEDULE": "0.5,1",
    }
    running = Worker(env, queues="webhooks", concurrency=THREADS).start()
    yield running
    running.stop()


@pytest.fixture
def api(e2e: Any, few_threads: Worker, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("WEBHOOK_ALLOW_PRIVATE_URLS", "1")
    return e2e


def submit(api: Any, key: str, url: str, count: int) -> list[str]:
    ids = []
    for _ in range(count):
        job = api.post("/v1/jobs", json={**IMAGE_JOB, "webhook_url": url}, headers=auth(key))
        assert job.status_code == 202, job.get_json()
        ids.append(job.get_json()["id"])
    return ids


def announced(receiver: Receiver, secret: str) -> Counter[str]:
    """How many times each job's event arrived (every request verified)."""
    return Counter(request.verify(secret)["data"]["id"] for request in receiver.requests)


def attempts_of(api: Any, key: str, job_id: str) -> list[tuple[str, int, list[int | None]]]:
    """The job's deliveries, once none is pending (the last sends may still be answering):
    status, attempts used, and each attempt's status code."""
    deadline = time.monotonic() + DEADLINE * 2
    while True:
        rows = api.get(f"/v1/jobs/{job_id}/webhook-deliveries", headers=auth(key)).get_json()
        if all(d["status"] != "pending" for d in rows["data"]) or time.monotonic() > deadline:
            return [
                (d["status"], d["attempts"], [a["status_code"] for a in d["attempt_log"]])
                for d in rows["data"]
            ]
        time.sleep(0.05)


# The claims it relies on run on both databases in tests/tasks/test_webhooks.py; one
# database here keeps the suite's time.
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_slow_tenant_cannot_hold_up_another_tenants_webhooks(
    api: Any, few_threads: Worker
) -> None:
    a_key, _ = register(api, "slow@example.com")
    b_key, _ = register(api, "fast@example.com")
    a_secret, b_secret = (
        api.get("/v1/webhooks/secret", headers=auth(key)).get_json()["secret"]
        for key in (a_key, b_key)
    )
    slow_replies = [Reply(200, delay=SLOW_ANSWER)] * (A_EVENTS * 2)

    with Receiver(*slow_replies) as slow, Receiver() as fast:
        a_jobs = submit(api, a_key, slow.url, A_EVENTS)
        for job_id in a_jobs:  # every A event is queued (and some are being sent)
            assert wait_for_job(api, a_key, job_id)["status"] == "succeeded"
        started = time.monotonic()
        b_jobs = submit(api, b_key, fast.url, B_EVENTS)
        fast.wait_for(B_EVENTS, timeout=B_BOUND)
        b_took = time.monotonic() - started
        a_by_then = len(slow.requests)
        slow.wait_for(A_EVENTS, timeout=A_EVENTS * SLOW_ANSWER / CAP * 2 + 10)
        a_took = time.monotonic() - started
        time.sleep(SLOW_ANSWER + 1)  # the last answers; a duplicate or retry would come now

    assert b_took < B_BOUND
    assert a_by_then <= A_EVENTS - CAP, "A's backlog was already through: nothing was shown"
    assert announced(fast, b_secret) == dict.fromkeys(b_jobs, 1)
    assert announced(slow, a_secret) == dict.fromkeys(a_jobs, 1)
    for key, jobs in ((a_key, a_jobs), (b_key, b_jobs)):
        for job_id in jobs:
            assert attempts_of(api, key, job_id) == [("succeeded", 1, [200])]
    deferred = [line for line in few_threads.output if "its endpoint is busy" in line]
    assert deferred  # A's extra attempts were put back, not sent
    print(f"B's {B_EVENTS} events in {b_took:.2f}s; A's {A_EVENTS} in {a_took:.1f}s, "
          f"{len(deferred)} deferrals")  # fmt: skip
