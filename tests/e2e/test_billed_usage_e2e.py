"""Every provider token is billed, end to end: answers the provider spoiled (cut off at
max_tokens, not the expected JSON) fail the job and charge their usage, capped at the
hold, with a usage log; and the largest input the API accepts for each operation runs to
success, never cut off. The ledger audit runs after each test."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select

from billing.operations import OPERATIONS, validate_input
from models import CreditUsageLog
from models.db import transaction
from tests.support import auth, register, wait_for_job

pytestmark = pytest.mark.e2e

ADMIN = {"X-Admin-Token": "test-admin-token"}


def crafted(n: int, spoil: str) -> dict[str, Any]:
    """An idea job like the ones that used ~64k provider tokens each for free."""
    return {
        "operation": "idea_generation",
        "input": {
            "cluster": {
                "name": f"{spoil} {n}",
                "keywords": [f"{spoil} {n} " + "!?" * 60 for _ in range(3)],
            },
            "count": 5,
        },
    }


def usage_log(job_id: str) -> CreditUsageLog:
    with transaction() as session:
        log = session.scalar(select(CreditUsageLog).where(CreditUsageLog.job_id == job_id))
    assert log is not None, job_id
    return log


def test_twelve_crafted_cut_off_jobs_each_pay_their_usage(e2e: Any, sim_control: Any) -> None:
    key, account = register(e2e)  # a free trial, as in the report
    for spoil in ("overlong", "not_json"):
        sim_control.post("/_sim/faults", json={"answer": spoil, "times": 6, "match": spoil})
    ids = []
    for spoil in ("overlong", "not_json"):
        for n in range(6):
            response = e2e.post("/v1/jobs", json=crafted(n, spoil), headers=auth(key))
            assert response.status_code == 202, response.get_json()
            ids.append(response.get_json()["id"])

    final = [wait_for_job(e2e, key, job_id, timeout=60) for job_id in ids]

    total = 0
    for job in final:
        assert (job["status"], job["error"]["code"]) == ("failed", "invalid_output"), job
        assert 0 < job["credits_charged"] <= job["reserved_credits"]
        assert f"charged: {job['credits_charged']} credits" in job["error"]["message"]
        log = usage_log(job["id"])
        assert (log.outcome, log.credits) == ("failed", job["credits_charged"])
        assert log.tokens_in > 0
        assert log.tokens_out > 0
        total += job["credits_charged"]
    overlong = [job for job in final if "cut off" in job["error"]["message"]]
    assert len(overlong) == 6
    credits = e2e.get("/v1/account", headers=auth(key)).get_json()["credits"]
    assert credits["balance"] == account["credits"]["balance"] - total
    assert credits["reserved"] == 0


# The output cap of the enterprise plan's default text model (gpt-4o-mini).
OUTPUT_CAP = 16_384


def sized_inputs() -> dict[str, tuple[int, Callable[[int], dict[str, Any]]]]:
    """Each operation's input at its limits but for one size (keywords, count, words), in
    shapes dense in tokens, and still within MAX_REQUEST_BYTES (256 KB) as a body."""
    dense = "!?" * 150
    return {
        "clustering": (1000, lambda n: {"keywords": [f"{i} " + "word " * 46 for i in range(n)]}),
        "idea_generation": (
            20,
            lambda n: {
                "cluster": {"name": dense, "keywords": [f"{i} {dense}"[:300] for i in range(200)]},
                "count": n,
            },
        ),
        "content_generation": (
            5000,
            lambda n: {
                "title": '"' * 300,
                "word_count": n,
                "keywords": [f"{i} {dense}"[:300] for i in range(50)],
            },
        ),
        "image_prompt_extraction": (
            10,
            lambda n: {"text": ('"' * 299 + ". ") * 165, "count": n},
        ),
        "image_generation": (10, lambda n: {"prompt": "a lighthouse at dusk, " * 180, "count": n}),
    }


def largest_inputs() -> dict[str, dict[str, Any]]:
    """The largest of each that the API accepts: no answer could outgrow the model's
    output cap (a larger one is refused up front, tests/api/test_jobs_api.py)."""
    chosen = {}
    for name, (most, make) in sized_inputs().items():
        operation = OPERATIONS[name]

        def fits(size: int, operation: Any = operation, make: Any = make) -> bool:
            job_input = validate_input(operation, make(size))
            return operation.output_tokens is None or (
                operation.max_output_tokens(job_input) <= OUTPUT_CAP
            )

        low, high = 1, most
        while low < high:  # the largest size that fits
            middle = (low + high + 1) // 2
            low, high = (middle, high) if fits(middle) else (low, middle - 1)
        assert fits(low), name
        chosen[name] = make(low)
    return chosen


def test_the_largest_input_of_each_operation_succeeds(e2e: Any) -> None:
    key, account = register(e2e, "big@example.com")
    e2e.patch(
        f"/v1/admin/accounts/{account['id']}",
        json={"plan": "enterprise", "status": "active"},
        headers=ADMIN,
    )
    e2e.post(
        f"/v1/admin/accounts/{account['id']}/credits",
        json={"amount": 10_000_000, "reason": "big inputs"},
        headers=ADMIN,
    )
    ids = {}
    for operation, job_input in largest_inputs().items():
        response = e2e.post(
            "/v1/jobs", json={"operation": operation, "input": job_input}, headers=auth(key)
        )
        assert response.status_code == 202, (operation, response.get_json())
        ids[operation] = response.get_json()["id"]

    for operation, job_id in ids.items():
        job = wait_for_job(e2e, key, job_id, timeout=120)
        assert job["status"] == "succeeded", (operation, job["error"])
        assert 0 < job["credits_charged"] <= job["reserved_credits"]
