"""End to end: API -> Redis -> real Celery worker -> simulated provider over HTTP.

Each test ends with the ledger audit (the `e2e` fixture).
"""

from __future__ import annotations

from typing import Any

import pytest
import redis
from sqlalchemy import func, select

from models import CreditReservation, CreditTransaction, CreditUsageLog, Job
from models.db import transaction
from tests.support import auth, register, wait_for_job

pytestmark = pytest.mark.e2e

JOBS: dict[str, dict[str, Any]] = {
    "clustering": {
        "keywords": ["running shoes", "running shoes for women", "trail running", "yoga mats"]
    },
    "idea_generation": {
        "cluster": {"name": "Running", "keywords": ["running shoes", "trail running"]},
        "count": 2,
    },
    "content_generation": {"title": "How to choose running shoes", "word_count": 300},
    "image_prompt_extraction": {
        "text": "A runner crosses a misty mountain trail at dawn. Her shoes are muddy.",
        "count": 2,
    },
    "image_generation": {"prompt": "a runner on a misty mountain trail at dawn", "count": 2},
}


def _account(client: Any, key: str) -> dict[str, Any]:
    return client.get("/v1/account", headers=auth(key)).get_json()


def _count(model: Any, **where: Any) -> int:
    with transaction() as session:
        query = select(func.count()).select_from(model)
        for name, value in where.items():
            query = query.where(getattr(model, name) == value)
        return session.scalar(query) or 0


def _check_result(operation: str, result: dict[str, Any]) -> None:
    if operation == "clustering":
        clustered = [kw for c in result["clusters"] for kw in c["keywords"]]
        assert sorted(clustered) == sorted(JOBS["clustering"]["keywords"])
        assert all(c["name"] for c in result["clusters"])
    elif operation == "idea_generation":
        assert len(result["ideas"]) == 2
        assert all(i["title"] for i in result["ideas"])
    elif operation == "content_generation":
        content = result["content"]
        assert content["title"]
        assert content["body"]
        assert 200 <= content["word_count"] <= 400
    elif operation == "image_prompt_extraction":
        assert len(result["prompts"]) == 2
    else:
        assert len(result["images"]) == 2
        assert all(image["url"].startswith("http") for image in result["images"])


@pytest.mark.parametrize("operation", list(JOBS))
def test_each_operation_settles_at_actual_cost(e2e: Any, operation: str) -> None:
    key, account = register(e2e)
    before = account["credits"]["available"]

    submitted = e2e.post(
        "/v1/jobs", json={"operation": operation, "input": JOBS[operation]}, headers=auth(key)
    )
    assert submitted.status_code == 202, submitted.get_json()
    body = submitted.get_json()
    assert body["status"] == "queued"
    assert body["operation"] == operation
    assert body["reserved_credits"] > 0

    job = wait_for_job(e2e, key, body["id"])
    assert job["status"] == "succeeded", job["error"]
    _check_result(operation, job["result"])
    assert 0 < job["credits_charged"] <= job["reserved_credits"]
    assert job["model"] == ("hidream-full" if operation == "image_generation" else "gpt-4o-mini")

    credits = _account(e2e, key)["credits"]
    assert credits["available"] == before - job["credits_charged"]
    assert credits["reserved"] == 0
    assert _count(CreditTransaction, job_id=job["id"], type="deduction") == 1
    assert _count(CreditUsageLog, job_id=job["id"]) == 1
    history = e2e.get("/v1/credits/transactions", headers=auth(key)).get_json()["data"]
    assert history[0]["type"] == "deduction"
    assert history[0]["amount"] == -job["credits_charged"]
    assert history[0]["balance_after"] == credits["balance"]


def test_provider_500_is_retried_and_charged_once(e2e: Any, sim_control: Any) -> None:
    key, _ = register(e2e)
    sim_control.post("/_sim/faults", json={"status": 500, "times": 1, "match": "retry me"})

    submitted = e2e.post(
        "/v1/jobs",
        json={"operation": "content_generation", "input": {"title": "retry me please"}},
        headers=auth(key),
    ).get_json()
    job = wait_for_job(e2e, key, submitted["id"])

    assert job["status"] == "succeeded"
    assert sim_control.get("/_sim/stats").json()["requests"]["chat"] == 2
    assert _count(CreditTransaction, job_id=job["id"], type="deduction") == 1
    assert _count(CreditUsageLog, job_id=job["id"]) == 1


def test_provider_that_always_fails_releases_the_hold(e2e: Any, sim_control: Any) -> None:
    key, account = register(e2e)
    sim_control.post("/_sim/faults", json={"status": 500, "times": 50})

    submitted = e2e.post(
        "/v1/jobs", json={"operation": "clustering", "input": JOBS["clustering"]}, headers=auth(key)
    ).get_json()
    job = wait_for_job(e2e, key, submitted["id"])

    assert job["status"] == "failed"
    assert job["error"]["code"] == "provider_unavailable"
    assert "500" in job["error"]["message"]
    assert job["credits_charged"] == 0
    credits = _account(e2e, key)["credits"]
    assert credits == account["credits"]
    assert _count(CreditTransaction, job_id=job["id"]) == 0
    with transaction() as session:
        hold = session.scalar(
            select(CreditReservation).where(CreditReservation.job_id == job["id"])
        )
        assert hold is not None
        assert hold.status == "released"


def test_provider_validation_error_is_not_retried(e2e: Any, sim_control: Any) -> None:
    key, _ = register(e2e)
    sim_control.post("/_sim/faults", json={"status": 400, "times": 5})

    submitted = e2e.post(
        "/v1/jobs",
        json={"operation": "image_generation", "input": {"prompt": "x"}},
        headers=auth(key),
    ).get_json()
    job = wait_for_job(e2e, key, submitted["id"])

    assert job["status"] == "failed"
    assert job["error"]["code"] == "provider_rejected"
    # The status and the provider's error code; its own text (which can quote our API
    # key, masked, or internal model names) stays in our logs.
    assert job["error"]["message"].startswith("The AI provider rejected the request: HTTP 400")
    assert "Simulated failure" not in job["error"]["message"]
    assert sim_control.get("/_sim/stats").json()["requests"]["images"] == 1


def test_a_provider_out_of_quota_fails_the_job_at_once(e2e: Any, sim_control: Any) -> None:
    """A 429 `insufficient_quota` is the provider account out of money: waiting it out
    like a rate limit would spend every job's whole deadline and pause the model."""
    key, _ = register(e2e)
    quota = {"status": 429, "code": "insufficient_quota", "times": 5}
    assert sim_control.post("/_sim/faults", json=quota).status_code == 201

    submitted = e2e.post(
        "/v1/jobs",
        json={"operation": "image_generation", "input": {"prompt": "x"}},
        headers=auth(key),
    ).get_json()
    job = wait_for_job(e2e, key, submitted["id"])

    assert (job["status"], job["credits_charged"]) == ("failed", 0)
    assert job["error"]["code"] == "provider_quota_exhausted"
    assert sim_control.get("/_sim/stats").json()["requests"]["images"] == 1
    account = e2e.get("/v1/account", headers=auth(key)).get_json()
    assert account["credits"]["reserved"] == 0


def test_too_few_credits_is_402_with_nothing_written(
    e2e: Any, redis_server: Any, sim_control: Any
) -> None:
    key, account = register(e2e)
    drained = e2e.post(
        f"/v1/admin/accounts/{account['id']}/credits",
        json={"amount": -1995, "reason": "test drain"},
        headers={"X-Admin-Token": "test-admin-token"},
    )
    assert drained.status_code == 200, drained.get_json()

    refused = e2e.post(
        "/v1/jobs",
        json={"operation": "content_generation", "input": {"title": "A long article"}},
        headers=auth(key),
    )

    assert refused.status_code == 402
    error = refused.get_json()["error"]
    assert error["code"] == "insufficient_credits"
    assert error["available"] == 5
    assert error["required"] > 5
    assert _count(Job, account_id=account["id"]) == 0
    assert _count(CreditReservation, account_id=account["id"]) == 0
    assert redis.Redis.from_url(redis_server.url).llen("text") == 0
    assert sim_control.get("/_sim/stats").json()["requests"]["chat"] == 0


def test_cancel_a_queued_job_releases_its_hold(e2e: Any, sim_control: Any) -> None:
    key, account = register(e2e)
    # Two slow jobs occupy both worker processes, so the third stays queued.
    sim_control.post("/_sim/faults", json={"latency_ms": 2500, "times": 2, "match": "slow blocker"})
    for _ in range(2):
        e2e.post(
            "/v1/jobs",
            json={"operation": "content_generation", "input": {"title": "slow blocker"}},
            headers=auth(key),
        )
    queued = e2e.post(
        "/v1/jobs", json={"operation": "clustering", "input": JOBS["clustering"]}, headers=auth(key)
    ).get_json()

    cancelled = e2e.post(f"/v1/jobs/{queued['id']}/cancel", headers=auth(key))

    assert cancelled.status_code == 200, cancelled.get_json()
    assert cancelled.get_json()["status"] == "cancelled"
    again = e2e.post(f"/v1/jobs/{queued['id']}/cancel", headers=auth(key))
    assert again.status_code == 409
    assert again.get_json()["error"]["code"] == "job_not_cancellable"
    for job in e2e.get("/v1/jobs", headers=auth(key)).get_json()["data"]:
        wait_for_job(e2e, key, job["id"])
    final = wait_for_job(e2e, key, queued["id"])
    assert final["status"] == "cancelled"
    assert final["credits_charged"] == 0
    assert _count(CreditTransaction, job_id=queued["id"]) == 0
    assert _account(e2e, key)["credits"]["reserved"] == 0
    assert account["credits"]["balance"] > 0
