"""Cancel, end to end (API -> real worker -> simulated provider): a queued job ends at
once; a running job ends `cancelled` at its worker's next safe point, paying nothing if
the provider was not called and the provider's usage if it answered. The ledger audit
runs after each test (the `e2e` fixture)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from sqlalchemy import select

from models import CreditUsageLog
from models.db import transaction
from tests.support import auth, register, wait_for_job
from workers import ratelimit

pytestmark = pytest.mark.e2e

IDEA = {
    "operation": "idea_generation",
    "input": {"cluster": {"name": "Cancel me", "keywords": ["cancel me"]}, "count": 2},
}


def submit(client: Any, key: str) -> str:
    response = client.post("/v1/jobs", json=IDEA, headers=auth(key))
    assert response.status_code == 202, response.get_json()
    job_id: str = response.get_json()["id"]
    return job_id


def wait_until(done: Any, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def status(client: Any, key: str, job_id: str) -> str:
    job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}", headers=auth(key)).get_json()
    return str(job["status"])


def balance(client: Any, key: str) -> dict[str, int]:
    credits: dict[str, int] = client.get("/v1/account", headers=auth(key)).get_json()["credits"]
    return credits


def test_cancel_a_queued_job(e2e: Any, sim_control: Any) -> None:
    key, _ = register(e2e)
    sim_control.post("/_sim/faults", json={"latency_ms": 2000, "times": 2})
    first, second = submit(e2e, key), submit(e2e, key)  # the free trial's 2 slots
    waiting = submit(e2e, key)

    cancelled = e2e.post(f"/v1/jobs/{waiting}/cancel", headers=auth(key))

    assert cancelled.status_code == 200
    body = cancelled.get_json()
    assert (body["status"], body["credits_charged"]) == ("cancelled", 0)
    for job_id in (first, second):
        assert wait_for_job(e2e, key, job_id)["status"] == "succeeded"
    assert sim_control.get("/_sim/stats").json()["requests"]["chat"] == 2


@pytest.fixture
def provider_paused(env: dict[str, str]) -> Iterator[None]:
    """Every worker holds its calls to gpt-4o-mini (as after a provider 429)."""
    ratelimit.pause("gpt-4o-mini", 60)
    yield
    redis.Redis.from_url(env["REDIS_URL"]).delete(*ratelimit._keys("gpt-4o-mini"))


def test_cancel_a_running_job_before_the_provider_call(
    e2e: Any, sim_control: Any, provider_paused: None
) -> None:
    key, account = register(e2e)
    job_id = submit(e2e, key)
    wait_until(lambda: status(e2e, key, job_id) == "running", "the job to start")

    requested = e2e.post(f"/v1/jobs/{job_id}/cancel", headers=auth(key))

    assert requested.status_code == 200
    assert requested.get_json()["cancel_requested_at"] is not None
    job = wait_for_job(e2e, key, job_id)
    assert (job["status"], job["credits_charged"]) == ("cancelled", 0)
    assert "before the provider answered" in job["error"]["message"]
    assert sim_control.get("/_sim/stats").json()["requests"]["chat"] == 0
    assert balance(e2e, key) == account["credits"]


def test_cancel_a_running_job_whose_answer_arrives_after_the_cancel(
    e2e: Any, sim_control: Any
) -> None:
    key, account = register(e2e)
    sim_control.post("/_sim/faults", json={"latency_ms": 3000, "times": 1})
    job_id = submit(e2e, key)
    wait_until(
        lambda: sim_control.get("/_sim/stats").json()["requests"]["chat"] == 1,
        "the provider call to start",
    )

    requested = e2e.post(f"/v1/jobs/{job_id}/cancel", headers=auth(key))

    assert requested.status_code == 200
    assert requested.get_json()["status"] == "running"
    job = wait_for_job(e2e, key, job_id)
    assert job["status"] == "cancelled"
    assert job["result"] is None
    assert 0 < job["credits_charged"] <= job["reserved_credits"]
    assert "while the provider answered" in job["error"]["message"]
    with transaction() as session:
        log = session.scalar(select(CreditUsageLog).where(CreditUsageLog.job_id == job_id))
        assert log is not None
        assert (log.outcome, log.credits) == ("cancelled", job["credits_charged"])
    assert balance(e2e, key)["balance"] == account["credits"]["balance"] - job["credits_charged"]
    again = e2e.post(f"/v1/jobs/{job_id}/cancel", headers=auth(key))
    assert again.status_code == 409
