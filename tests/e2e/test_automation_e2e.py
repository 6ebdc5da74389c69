"""End to end: automation runs through the API, a real worker and the simulator.

Each test ends with the ledger audit (the `e2e` fixture), which proves a run's charges +
released + still held == its hold and that its jobs spent only from it.
"""

from __future__ import annotations

import signal
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
from models.base import as_utc, utcnow
from models.db import transaction
from tests.e2e.test_recovery_e2e import PrivateStack, private_redis, stack_env
from tests.support import auth, paid_account, register

__all__ = ["private_redis"]  # a fixture, used by the SIGKILL test

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


def start(client: Any, key: str, stages: list[str] | None = None, **options: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"keywords": KEYWORDS, "options": {"word_count": 200, **options}}
    if stages:
        body["stages"] = stages
    response = client.post("/v1/automations", json=body, headers=auth(key))
    assert response.status_code == 202, response.get_json()
    submitted: dict[str, Any] = response.get_json()
    return submitted


def wait_for_run(client: Any, key: str, run_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(f"/v1/automations/{run_id}", headers=auth(key))
        # The Flask test client, or httpx against a private stack.
        run: dict[str, Any] = (
            response.get_json() if hasattr(response, "get_json") else response.json()
        )
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
        "/v1/automations/estimate", json={"keywords": KEYWORDS, "options": {"word_count": 200}},
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
        assert counts["total"] >= 1, name
        assert counts["succeeded"] == counts["total"], (name, counts)
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
            assert item is not None
            assert item.job_id == parent.id
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
        assert stored is not None
        assert (stored.held_credits, stored.status) == (0, "succeeded")


def test_too_few_credits_is_a_402_with_nothing_created(e2e: Any) -> None:
    key, account = register(e2e)  # the free trial's credits
    body = {"keywords": KEYWORDS, "options": {"ideas_per_cluster": 10, "prompts_per_article": 5,
            "images_per_prompt": 4, "word_count": 5000}}  # fmt: skip
    needed = e2e.post("/v1/automations/estimate", json=body, headers=auth(key)).get_json()
    assert "affordable" in needed, needed
    assert not needed["affordable"]

    refused = e2e.post("/v1/automations", json=body, headers=auth(key))

    assert refused.status_code == 402
    error = refused.get_json()["error"]
    assert error["code"] == "insufficient_credits"
    assert (error["required"], error["available"]) == (needed["credits"], needed["available"])
    with transaction() as session:
        assert session.scalar(select(func.count()).select_from(AutomationRun)) == 0
        assert session.scalar(
            select(func.count()).select_from(Job).where(Job.account_id == account["id"])
        ) == 0  # fmt: skip
    assert e2e.get("/v1/automations", headers=auth(key)).get_json()["data"] == []
    assert credits(e2e, key)["reserved"] == 0


def test_a_failed_article_fails_only_its_branch(e2e: Any, sim_control: Any) -> None:
    key, _, _ = paid_account(e2e)
    sim_control.post(
        "/_sim/faults",
        json={"status": 400, "times": 1, "match": "OPERATION: content_generation"},
    )

    run = wait_for_run(e2e, key, start(e2e, key, ideas_per_cluster=2)["id"])

    assert run["status"] == "partially_succeeded", run
    articles = run["stages"]["content_generation"]
    assert articles["failed"] == 1
    assert articles["succeeded"] == articles["total"] - 1 >= 1
    # The failed article has no children: nothing made, nothing charged for them.
    jobs = jobs_of(run["id"])
    [failed] = [job for job in jobs if job.status == "failed"]
    assert failed.operation == "content_generation"
    assert failed.credits_charged == 0
    assert not [job for job in jobs if job.parent_job_id == failed.id]
    assert run["stages"]["image_prompt_extraction"]["total"] == articles["succeeded"]
    assert run["credits_charged"] == sum(job.credits_charged or 0 for job in jobs)
    assert run["released_credits"] == run["reserved_credits"] - run["credits_charged"]
    assert (run["held_credits"], credits(e2e, key)["reserved"]) == (0, 0)


def test_cancel_mid_run_stops_it_and_closes_the_hold(e2e: Any, sim_control: Any) -> None:
    key, _, _ = paid_account(e2e)
    slow = {"latency_ms": 2500, "times": 50, "match": "OPERATION: content_generation"}
    sim_control.post("/_sim/faults", json=slow)
    run_id = start(e2e, key, ideas_per_cluster=2)["id"]
    deadline = time.monotonic() + 60
    while not any(j.operation == "content_generation" and j.status == "running"
                  for j in jobs_of(run_id)):  # fmt: skip
        assert time.monotonic() < deadline, "no article started"
        time.sleep(0.05)

    cancelled = e2e.post(f"/v1/automations/{run_id}/cancel", headers=auth(key))
    answered = utcnow()

    assert cancelled.status_code == 200, cancelled.get_json()
    run = wait_for_run(e2e, key, run_id, timeout=60)
    assert run["status"] == "cancelled"
    with transaction() as session:
        stored = session.get(AutomationRun, run_id)
        assert stored is not None
        assert stored.cancel_requested_at is not None
    jobs = jobs_of(run_id)
    # A start that raced the cancel (its statement read the run before the cancel
    # committed) may carry a time after `cancel_requested_at`; none starts once answered.
    assert all(job.started_at is None or as_utc(job.started_at) <= answered for job in jobs)
    assert not [job for job in jobs if job.operation == "image_prompt_extraction"]
    assert {job.status for job in jobs} <= {"succeeded", "cancelled"}
    assert run["released_credits"] == run["reserved_credits"] - run["credits_charged"]
    assert (run["held_credits"], credits(e2e, key)["reserved"]) == (0, 0)
    again = e2e.post(f"/v1/automations/{run_id}/cancel", headers=auth(key))
    assert again.status_code == 409


def test_usage_insights_count_a_run_under_automation(e2e: Any) -> None:
    key, _, _ = paid_account(e2e)
    run = wait_for_run(e2e, key, start(e2e, key, ["clustering", "idea_generation"])["id"])

    insights = e2e.get("/v1/usage/insights?days=7", headers=auth(key)).get_json()

    sources = {entry["source"]: entry["credits"] for entry in insights["by_source"]}
    assert sources == {"manual": 0, "automation": run["credits_charged"]}
    assert sources["automation"]


def test_a_run_survives_a_killed_worker(
    env: dict[str, str], private_redis: str, sim_control: Any
) -> None:
    slow = {"latency_ms": 3000, "times": 3, "match": "OPERATION: content_generation"}
    sim_control.post("/_sim/faults", json=slow)
    with PrivateStack(stack_env(env, private_redis)) as stack:
        key = stack.account("killed@example.com", "growth")
        body = {"keywords": KEYWORDS, "options": {"word_count": 200}, "stages": ["clustering",
                "idea_generation", "content_generation"]}  # fmt: skip
        response = stack.http.post("/v1/automations", json=body, headers=auth(key))
        assert response.status_code == 202, response.text
        run_id = response.json()["id"]
        deadline = time.monotonic() + 60
        while not any(j.operation == "content_generation" and j.status == "running"
                      for j in jobs_of(run_id)):  # fmt: skip
            assert time.monotonic() < deadline, "no article started"
            time.sleep(0.05)
        stack.worker.stop(signal.SIGKILL)
        stack.worker.start()  # a fresh worker; the reconciler re-sends the lost runs

        run = wait_for_run(stack.http, key, run_id, timeout=120)

    assert run["status"] == "succeeded", run
    jobs = jobs_of(run_id)
    assert any(job.attempts == 2 for job in jobs)
    assert deductions_per_job(run_id) == {job.id: 1 for job in jobs}
    assert run["credits_charged"] <= run["reserved_credits"]
    assert run["held_credits"] == 0
