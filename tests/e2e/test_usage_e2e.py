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

from billing.artifacts import KINDS
from models import CreditTransaction, CreditUsageLog, Job
from models.db import transaction
from tests.support import all_pages, auth, paid_account, register, wait_for_job

pytestmark = pytest.mark.e2e
JOBS: dict[str, dict[str, Any]] = {
    "clustering": {"keywords": ["running shoes", "trail running", "yoga mats"]},
    "idea_generation": {"cluster": {"name": "Running", "keywords": ["running shoes"]}, "count": 2},
    "content_generation": {"title": "How to choose running shoes", "word_count": 300},
    "image_prompt_extraction": {"text": "A runner at dawn. Her shoes are muddy.", "count": 2},
    "image_generation": {"prompt": "a runner on a misty trail", "count": 2},
}
ARTIFACTS = {kind.operation: kind.model for kind in KINDS.values()}
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


def test_usage_of_every_operation_on_two_sites_and_two_models_equals_the_ledger(
    e2e: Any,
) -> None:
    key, account_id, sites = paid_account(e2e)
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
    assert _by(insights["by_operation"], "operation") == _ledger(account_id, Job.operation)
    assert _by(insights["by_site"], "site_id") == _ledger(account_id, Job.site_id)
    assert _by(insights["by_model"], "model") == _ledger(account_id, Job.model)
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
            session.scalars(select(CreditUsageLog).where(CreditUsageLog.account_id == account_id))
        )
        stored = {
            operation: session.scalar(
                select(func.count()).select_from(model).where(model.account_id == account_id)
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
    rows = all_pages(e2e, key, "/v1/usage/logs", 3)
    assert sorted(r["job_id"] for r in rows) == sorted(j["id"] for j in jobs)
    assert {r["job_id"]: r["credits"] for r in rows} == {
        j["id"]: j["credits_charged"] for j in jobs
    }
    # five jobs on the second site: exactly one full page, then no cursor
    site_rows = all_pages(e2e, key, "/v1/usage/logs", 5, site_id=sites[1])
    assert sorted(r["job_id"] for r in site_rows) == sorted(
        j["id"] for j in jobs if j["site_id"] == sites[1]
    )
    dall_e = all_pages(e2e, key, "/v1/usage/logs", 1, model="dall-e-3")
    assert [r["model"] for r in dall_e] == ["dall-e-3"]
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
