"""Forced models for free plans, honoured preferences for paid plans, through a real worker."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from models import AISettings, CreditUsageLog
from models.db import transaction
from tests.support import auth, on_plan, register, wait_for_job

pytestmark = pytest.mark.e2e
ADMIN = {"X-Admin-Token": "test-admin-token"}
CLUSTER = {"operation": "clustering", "input": {"keywords": ["red shoes", "red boots"]}}
IMAGE = {"operation": "image_generation", "input": {"prompt": "red shoes", "count": 1}}


def _prefer(account_id: str, operation: str, model: str) -> None:
    """Straight into the table: a preference left over from a paid plan before a downgrade."""
    with transaction() as session:
        session.add(AISettings(account_id=account_id, operation=operation, model_name=model))


def _usage(job_id: str) -> CreditUsageLog:
    with transaction() as session:
        log = session.scalar(select(CreditUsageLog).where(CreditUsageLog.job_id == job_id))
        assert log is not None
        return log


def test_free_trial_runs_the_cheap_models_whatever_its_settings(e2e: Any) -> None:
    key, account = register(e2e)
    _prefer(account["id"], "clustering", "gpt-4o")
    _prefer(account["id"], "image_generation", "gpt-image-1")

    text = wait_for_job(
        e2e, key, e2e.post("/v1/jobs", json=CLUSTER, headers=auth(key)).get_json()["id"]
    )
    image = wait_for_job(
        e2e, key, e2e.post("/v1/jobs", json=IMAGE, headers=auth(key)).get_json()["id"]
    )
    refused = e2e.post("/v1/jobs", json={**CLUSTER, "model": "gpt-4o"}, headers=auth(key))

    assert (text["status"], text["model"]) == ("succeeded", "gpt-4o-mini")
    assert (image["status"], image["model"]) == ("succeeded", "hidream-full")
    assert image["credits_charged"] == 1
    assert _usage(text["id"]).model == "gpt-4o-mini"
    assert refused.status_code == 403
    assert refused.get_json()["error"]["code"] == "model_not_allowed"
    assert refused.get_json()["error"]["allowed"] == ["gpt-4o-mini"]


def test_paid_plan_preference_is_honoured_and_priced(e2e: Any) -> None:
    key, account = register(e2e)
    e2e.patch(
        f"/v1/admin/accounts/{account['id']}",
        json={"plan": "growth", "status": "active"},
        headers=ADMIN,
    )
    e2e.put(
        "/v1/ai-settings", json={"operation": "clustering", "model": "gpt-4o"}, headers=auth(key)
    )

    preferred = wait_for_job(
        e2e, key, e2e.post("/v1/jobs", json=CLUSTER, headers=auth(key)).get_json()["id"]
    )
    explicit = wait_for_job(
        e2e,
        key,
        e2e.post("/v1/jobs", json={**IMAGE, "model": "gpt-image-1"}, headers=auth(key)).get_json()[
            "id"
        ],
    )

    assert (preferred["status"], preferred["model"]) == ("succeeded", "gpt-4o")
    usage = _usage(preferred["id"])
    assert usage.model == "gpt-4o"
    # gpt-4o: 25 tokens per credit.
    assert preferred["credits_charged"] == -(-(usage.tokens_in + usage.tokens_out) // 25)
    assert (explicit["model"], explicit["credits_charged"]) == ("gpt-image-1", 15)


def test_a_waiting_job_on_a_model_the_new_plan_refuses_fails_uncharged(
    e2e: Any, sim_control: Any
) -> None:
    """Starter with one slot: a gpt-4o job waits behind a slow one; the account moves to
    free meanwhile. When the slot frees, the worker refuses gpt-4o for a free account:
    failed `model_not_allowed`, nothing charged, the provider never called for it."""
    key, account_id = on_plan(e2e, "starter")
    capped = e2e.patch("/v1/admin/plans/starter", json={"max_concurrent_jobs": 1}, headers=ADMIN)
    assert capped.status_code == 200, capped.get_json()
    sim_control.post("/_sim/faults", json={"latency_ms": 1500, "times": 1})
    slow = e2e.post("/v1/jobs", json=CLUSTER, headers=auth(key)).get_json()["id"]
    waiting = e2e.post("/v1/jobs", json={**CLUSTER, "model": "gpt-4o"}, headers=auth(key))
    assert waiting.status_code == 202, waiting.get_json()
    moved = e2e.patch(f"/v1/admin/accounts/{account_id}", json={"plan": "free"}, headers=ADMIN)
    assert moved.status_code == 200, moved.get_json()

    refused = wait_for_job(e2e, key, waiting.get_json()["id"])

    assert wait_for_job(e2e, key, slow)["status"] == "succeeded"
    assert (refused["status"], refused["model"], refused["credits_charged"]) == (
        "failed",
        "gpt-4o",
        0,
    )
    assert refused["error"]["code"] == "model_not_allowed"
    assert refused["error"]["message"] == (
        "Your plan no longer allows gpt-4o for clustering; nothing was charged."
    )
    assert sim_control.get("/_sim/stats").json()["requests"]["chat"] == 1
    with transaction() as session:
        logs = session.scalars(
            select(CreditUsageLog.model).where(CreditUsageLog.account_id == account_id)
        ).all()
    assert logs == ["gpt-4o-mini"]
    credits = e2e.get("/v1/account", headers=auth(key)).get_json()["credits"]
    assert credits["reserved"] == 0
