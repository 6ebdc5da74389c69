"""Usage analytics end to end: jobs of every operation on two sites and two models run
through the real worker and provider, then every insight, log page and CSV line is
checked against the ledger's own rows and the stored artifacts. The audit runs after."""

from __future__ import annotations

import csv
import io
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, select

from models import (
    Cluster,
    Content,
    CreditTransaction,
    CreditUsageLog,
    Idea,
    Image,
    ImagePrompt,
    Job,
)
from models.db import transaction
from tests.support import auth, register, wait_for_job

pytestmark = pytest.mark.e2e
ADMIN = {"X-Admin-Token": "test-admin-token"}
JOBS: dict[str, dict[str, Any]] = {
    "clustering": {"keywords": ["running shoes", "trail running", "yoga mats"]},
    "idea_generation": {"cluster": {"name": "Running", "keywords": ["running shoes"]}, "count": 2},
    "content_generation": {"title": "How to choose running shoes", "word_count": 300},
    "image_prompt_extraction": {"text": "A runner at dawn. Her shoes are muddy.", "count": 2},
    "image_generation": {"prompt": "a runner on a misty trail", "count": 2},
}
ARTIFACTS = {
    "clustering": Cluster,
    "idea_generation": Idea,
    "content_generation": Content,
    "image_prompt_extraction": ImagePrompt,
    "image_generation": Image,
}
SECOND_MODEL = {"text": "gpt-4o", "image": "dall-e-3"}


def _ledger(account_id: str, key: Any) -> dict[Any, list[int]]:
    """[credits, jobs] per `key`, from the deductions the ledger posted."""
    with transaction() as session:
        rows = session.execute(
            select(key, -func.sum(CreditTransaction.amount), func.count())
            .join(Job, Job.id == CreditTransaction.job_id)
            .where(
                CreditTransaction.account_id == account_id, CreditTransaction.type == "deduction"
            )
            .group_by(key)
        )
        return {k: [int(c), int(n)] for k, c, n in rows}


def _by(entries: list[dict[str, Any]], key: str) -> dict[Any, list[int]]:
    return {e[key]: [e["credits"], e["jobs"]] for e in entries if e["jobs"]}


def _pages(client: Any, key: str, query: dict[str, Any], limit: int) -> list[dict[str, Any]]:
    rows, cursor = [], None
    while True:
        page = client.get(
            "/v1/usage/logs",
            query_string={**query, "limit": limit, **({"cursor": cursor} if cursor else {})},
            headers=auth(key),
        ).get_json()
        assert len(page["data"]) == limit or page["next_cursor"] is None
        rows += page["data"]
        cursor = page["next_cursor"]
        if cursor is None:
            return rows


def test_usage_of_every_operation_on_two_sites_and_two_models_equals_the_ledger(
    e2e: Any,
) -> None:
    key, account = register(e2e)
    e2e.patch(
        f"/v1/admin/accounts/{account['id']}",
        json={"plan": "growth", "status": "active"},
        headers=ADMIN,
    )
    sites = [
        e2e.post("/v1/sites", json={"name": f"blog {n}"}, headers=auth(key)).get_json()["id"]
        for n in range(2)
    ]
    estimates, submitted = {}, []
    for site, second in ((sites[0], False), (sites[1], True)):
        for operation, job_input in JOBS.items():
            body: dict[str, Any] = {"operation": operation, "input": job_input, "site_id": site}
            if second:
                kind = "image" if operation == "image_generation" else "text"
                body["model"] = SECOND_MODEL[kind]
            estimate = e2e.post("/v1/jobs/estimate", json=body, headers=auth(key)).get_json()
            job = e2e.post("/v1/jobs", json=body, headers=auth(key)).get_json()
            estimates[job["id"]] = estimate
            submitted.append(job)
    other_key, _ = register(e2e, "other@example.com")
    other_job = e2e.post(
        "/v1/jobs", json={"operation": "clustering", "input": JOBS["clustering"]},
        headers=auth(other_key),
    ).get_json()  # fmt: skip
    jobs = [wait_for_job(e2e, key, job["id"]) for job in submitted]
    wait_for_job(e2e, other_key, other_job["id"])

    # the estimate is the hold the submission took
    for job in submitted:
        estimate = estimates[job["id"]]
        assert (estimate["credits"], estimate["model"]) == (job["reserved_credits"], job["model"])
        assert estimate["affordable"] is True
    assert all(job["status"] == "succeeded" for job in jobs), [j["error"] for j in jobs]
    assert {job["model"] for job in jobs} == {
        "gpt-4o-mini", "gpt-4o", "hidream-full", "dall-e-3",
    }  # fmt: skip

    insights = e2e.get("/v1/usage/insights?days=7", headers=auth(key)).get_json()

    # every breakdown equals the ledger's deductions grouped the same way
    assert _by(insights["by_operation"], "operation") == _ledger(account["id"], Job.operation)
    assert _by(insights["by_site"], "site_id") == _ledger(account["id"], Job.site_id)
    assert _by(insights["by_model"], "model") == _ledger(account["id"], Job.model)
    charged = sum(job["credits_charged"] for job in jobs)
    assert insights["totals"]["credits"] == charged
    assert insights["totals"]["jobs"] == len(jobs) == 10
    for section in ("by_operation", "by_site", "by_model", "by_source", "timeline"):
        assert sum(e["credits"] for e in insights[section]) == charged, section
    manual, automation = insights["by_source"]
    assert (manual["source"], manual["credits"], automation["credits"]) == ("manual", charged, 0)
    tiers = {e["tier"]: (e["credits"], e["images"]) for e in insights["by_image_tier"]}
    assert tiers == {"basic": (2, 2), "quality": (10, 2), "premium": (0, 0)}

    # the usage logs' rows, and items created equal the stored artifacts
    with transaction() as session:
        logs = list(
            session.scalars(
                select(CreditUsageLog).where(CreditUsageLog.account_id == account["id"])
            )
        )
        stored = {
            operation: session.scalar(
                select(func.count()).select_from(model).where(model.account_id == account["id"])
            )
            for operation, model in ARTIFACTS.items()
        }
    assert len(logs) == len(jobs)
    assert insights["totals"]["credits"] == sum(log.credits for log in logs)
    assert Decimal(insights["totals"]["cost_usd"]) == sum(log.cost_usd for log in logs)
    assert {e["operation"]: e["items"] for e in insights["by_operation"]} == stored
    assert stored["image_generation"] == 4
    assert stored["content_generation"] == 2

    # log pages, filters at page boundaries, and the CSV agree
    rows = _pages(e2e, key, {}, 3)
    assert sorted(r["job_id"] for r in rows) == sorted(j["id"] for j in jobs)
    assert {r["job_id"]: r["credits"] for r in rows} == {
        j["id"]: j["credits_charged"] for j in jobs
    }
    site_rows = _pages(e2e, key, {"site_id": sites[1]}, 5)  # exactly one full page
    assert sorted(r["job_id"] for r in site_rows) == sorted(
        j["id"] for j in jobs if j["site_id"] == sites[1]
    )
    assert [r["model"] for r in _pages(e2e, key, {"model": "dall-e-3"}, 1)] == ["dall-e-3"]
    exported = e2e.get("/v1/usage/logs?format=csv", headers=auth(key)).data.decode()
    lines = exported.splitlines()
    assert lines[0].startswith("id,created_at,operation,detail,model")
    assert len(lines) == 1 + len(rows)
    parsed = list(csv.DictReader(io.StringIO(exported)))
    assert [(p["id"], p["credits"], p["cost_usd"]) for p in parsed] == [
        (str(r["id"]), str(r["credits"]), r["cost_usd"]) for r in rows
    ]

    # another account's usage never shows, in either direction
    theirs = e2e.get("/v1/usage/logs", headers=auth(other_key)).get_json()["data"]
    assert [r["job_id"] for r in theirs] == [other_job["id"]]
    assert other_job["id"] not in exported
    mine = e2e.get("/v1/clusters", headers=auth(key)).get_json()["data"]
    assert {c["job_id"] for c in mine} <= {j["id"] for j in jobs}
