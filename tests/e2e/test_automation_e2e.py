"""End to end: automation runs through the API, a real worker and the simulator.

Each test ends with the ledger audit (the `e2e` fixture), which proves a run's charges +
released + still held == its hold and that its jobs spent only from it.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from sqlalchemy import func, select

from models import (
    AutomationRun,
    Cluster,
    Content,
    CreditReservation,
    CreditTransaction,
    Idea,
    Image,
    ImagePrompt,
    Job,
)
from models.db import transaction
from tests.support import auth, paid_account

pytestmark = pytest.mark.e2e

KEYWORDS = [
    "running shoes",
    "trail running",
    "marathon training",
    "yoga mats",
    "yoga for beginners",
    "protein powder",
]
FINAL = ("succeeded", "partially_succeeded", "failed", "cancelled")


def start(client: Any, key: str, **options: Any) -> dict[str, Any]:
    body = {"keywords": KEYWORDS, "word_count": 200, **options}
    response = client.post("/v1/automations", json=body, headers=auth(key))
    assert response.status_code == 202, response.get_json()
    submitted: dict[str, Any] = response.get_json()
    return submitted


def wait_for_run(client: Any, key: str, run_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        run: dict[str, Any] = client.get(f"/v1/automations/{run_id}", headers=auth(key)).get_json()
        if run["status"] in FINAL:
            return run
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run_id} still {run['status']} after {timeout}s: {run}")
        time.sleep(0.1)


def credits(client: Any, key: str) -> dict[str, int]:
    body: dict[str, int] = client.get("/v1/account", headers=auth(key)).get_json()["credits"]
    return body


def jobs_of(run_id: str) -> list[Job]:
    with transaction() as session:
        return list(session.scalars(select(Job).where(Job.automation_id == run_id)))


def deductions_per_job(run_id: str) -> dict[str, int]:
    with transaction() as session:
        rows = session.execute(
            select(CreditTransaction.job_id, func.count())
            .join(Job, Job.id == CreditTransaction.job_id)
            .where(Job.automation_id == run_id, CreditTransaction.type == "deduction")
            .group_by(CreditTransaction.job_id)
        ).all()
    return {job_id: count for job_id, count in rows}


def test_a_six_keyword_run_goes_through_every_stage(e2e: Any) -> None:
    key, _, _ = paid_account(e2e)
    before = credits(e2e, key)
    estimate = e2e.post(
        "/v1/automations/estimate", json={"keywords": KEYWORDS, "word_count": 200},
        headers=auth(key),
    ).get_json()  # fmt: skip

    submitted = start(e2e, key)

    assert submitted["reserved_credits"] == estimate["credits"]
    assert credits(e2e, key)["reserved"] == estimate["credits"]
    run = wait_for_run(e2e, key, submitted["id"])
    assert run["status"] == "succeeded", run
    stages = run["stages"]
    assert list(stages) == [
        "clustering", "idea_generation", "content_generation", "image_prompt_extraction",
        "image_generation",
    ]  # fmt: skip
    for name, counts in stages.items():
        assert counts["total"] >= 1 and counts["succeeded"] == counts["total"], (name, counts)
    assert stages["clustering"]["total"] == 1
    assert stages["image_generation"]["total"] == stages["content_generation"]["total"]
    items = run["items"]
    assert len(items["clusters"]) == stages["idea_generation"]["total"]
    assert len(items["images"]) == stages["image_generation"]["total"]
    # Linked: each job was made from its parent's item, and made its own items.
    jobs = jobs_of(run["id"])
    by_id = {job.id: job for job in jobs}
    with transaction() as session:
        for job in jobs:
            if job.operation == "clustering":
                assert job.parent_job_id is None
                continue
            parent = by_id[job.parent_job_id]  # type: ignore[index]
            source = {
                "idea_generation": Cluster,
                "content_generation": Idea,
                "image_prompt_extraction": Content,
                "image_generation": ImagePrompt,
            }
            item = session.get(source[job.operation], job.source_item_id)
            assert item is not None and item.job_id == parent.id  # fmt: skip
        assert session.scalar(select(func.count()).select_from(Image).join(Job).where(
            Job.automation_id == run["id"])) == len(items["images"])  # fmt: skip
        holds = session.scalars(
            select(CreditReservation).join(Job).where(Job.automation_id == run["id"])
        ).all()
        assert {hold.automation_id for hold in holds} == {run["id"]}
        assert all(hold.status == "settled" for hold in holds)
    # Money: charged <= held, one deduction per job, the rest released, nothing held.
    assert 0 < run["credits_charged"] <= run["reserved_credits"]
    assert run["credits_charged"] == sum(job.credits_charged or 0 for job in jobs)
    assert run["released_credits"] == run["reserved_credits"] - run["credits_charged"]
    assert run["held_credits"] == 0
    assert deductions_per_job(run["id"]) == {job.id: 1 for job in jobs}
    after = credits(e2e, key)
    assert after["reserved"] == 0
    assert after["balance"] == before["balance"] - run["credits_charged"]
    # The jobs are ordinary jobs, listed with their run.
    listed = e2e.get(
        "/v1/jobs", query_string={"automation_id": run["id"], "limit": 100}, headers=auth(key)
    ).get_json()["data"]
    assert {job["id"] for job in listed} == set(by_id)
    assert all(job["automation_id"] == run["id"] for job in listed)
    runs = e2e.get("/v1/automations", headers=auth(key)).get_json()
    assert [r["id"] for r in runs["data"]] == [run["id"]]
    with transaction() as session:
        stored = session.get(AutomationRun, run["id"])
        assert stored is not None and (stored.held_credits, stored.status) == (0, "succeeded")
