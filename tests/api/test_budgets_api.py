"""Spending budgets: a submission whose hold would push this period's charged + held
credits over a budget is refused with 402 `budget_exceeded`, also under concurrency."""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any

from sqlalchemy import event

from billing import lifecycle
from billing.submission import submit_job
from models import Account, utcnow
from models.db import get_engine, transaction
from tests.conftest import assert_audit_clean
from tests.factories import HOLD_TTL, make_account, request
from tests.support import auth, end_period_now, join_team, register, settle

ADMIN = {"X-Admin-Token": "test-admin-token"}
CLUSTERING = {"operation": "clustering", "input": {"keywords": ["running shoes", "trail shoes"]}}
IMAGE = {"operation": "image_generation", "input": {"prompt": "a lighthouse"}}


def funded(client: Any, email: str = "budget@example.com") -> str:
    """An active Growth account: 42,000 credits, far more than any budget below."""
    key, account = register(client, email)
    client.patch(
        f"/v1/admin/accounts/{account['id']}",
        json={"plan": "growth", "status": "active"},
        headers=ADMIN,
    )
    return key


def hold_of(client: Any, key: str, body: dict[str, Any]) -> int:
    """One job's hold, learnt by submitting it and cancelling it (a released hold)."""
    job = client.post("/v1/jobs", json=body, headers=auth(key)).get_json()
    client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth(key))
    return int(job["reserved_credits"])


def test_thirty_concurrent_submissions_against_a_budget_for_five_holds(app: Any) -> None:
    client = app.test_client()
    key = funded(client)
    hold = hold_of(client, key, CLUSTERING)
    budget = client.put("/v1/account/budget", json={"monthly_credits": 5 * hold}, headers=auth(key))
    assert budget.status_code == 200, budget.get_json()
    barrier = threading.Barrier(30)
    answers: list[tuple[int, dict[str, Any]]] = []

    def submit() -> None:
        own = app.test_client()  # each thread: its own request, session and connection
        barrier.wait(30)
        response = own.post("/v1/jobs", json=CLUSTERING, headers=auth(key))
        answers.append((response.status_code, response.get_json()))

    threads = [threading.Thread(target=submit) for _ in range(30)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    codes = sorted(code for code, _ in answers)
    assert codes == [202] * 5 + [402] * 25, answers
    refusals = [body["error"] for code, body in answers if code == 402]
    assert {e["code"] for e in refusals} == {"budget_exceeded"}
    assert {(e["budget"], e["limit"], e["required"]) for e in refusals} == {
        ("monthly", 5 * hold, hold)
    }
    assert {e["used"] for e in refusals} == {5 * hold}
    seen = client.get("/v1/account/budget", headers=auth(key)).get_json()
    assert seen["used"]["monthly"] == 5 * hold
    assert (
        client.get("/v1/account", headers=auth(key)).get_json()["credits"]["reserved"] == 5 * hold
    )
    assert_audit_clean()


def test_a_per_operation_budget_leaves_other_operations_alone(client: Any) -> None:
    key = funded(client)
    image_hold = hold_of(client, key, IMAGE)
    client.put(
        "/v1/account/budget",
        json={"monthly_credits": None, "per_operation": {"image_generation": image_hold}},
        headers=auth(key),
    )

    first = client.post("/v1/jobs", json=IMAGE, headers=auth(key))
    second = client.post("/v1/jobs", json=IMAGE, headers=auth(key))
    text = client.post("/v1/jobs", json=CLUSTERING, headers=auth(key))

    assert (first.status_code, second.status_code, text.status_code) == (202, 402, 202)
    error = second.get_json()["error"]
    assert (error["budget"], error["used"], error["required"]) == (
        "image_generation",
        image_hold,
        image_hold,
    )
    assert "image_generation budget" in error["message"]
    view = client.get("/v1/account/budget", headers=auth(key)).get_json()
    assert view["used"]["per_operation"] == {"image_generation": image_hold}


def test_a_cancelled_job_gives_its_budget_back(client: Any) -> None:
    key = funded(client)
    hold = hold_of(client, key, CLUSTERING)
    client.put("/v1/account/budget", json={"monthly_credits": hold}, headers=auth(key))
    job = client.post("/v1/jobs", json=CLUSTERING, headers=auth(key)).get_json()
    assert client.post("/v1/jobs", json=CLUSTERING, headers=auth(key)).status_code == 402
    client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth(key))
    assert client.post("/v1/jobs", json=CLUSTERING, headers=auth(key)).status_code == 202


def test_a_budget_check_after_the_period_end_leaves_the_old_periods_spending_out(
    client: Any, no_enqueue: None
) -> None:
    """The budget counts the period holding now, even before the hourly rollover has
    stored it: what the ended period charged is not this period's."""
    key = funded(client)
    account_id = client.get("/v1/account", headers=auth(key)).get_json()["id"]
    hold = hold_of(client, key, CLUSTERING)
    client.put("/v1/account/budget", json={"monthly_credits": hold}, headers=auth(key))
    spent = client.post("/v1/jobs", json=CLUSTERING, headers=auth(key)).get_json()["id"]
    settle(spent)
    charged = client.get(f"/v1/jobs/{spent}", headers=auth(key)).get_json()["credits_charged"]
    full = client.post("/v1/jobs", json=CLUSTERING, headers=auth(key))

    end = end_period_now(account_id)
    fresh = client.get("/v1/account/budget", headers=auth(key)).get_json()
    allowed = client.post("/v1/jobs", json=CLUSTERING, headers=auth(key))
    held = client.get("/v1/account/budget", headers=auth(key)).get_json()
    with transaction() as session:
        lifecycle.roll_over_periods(session, utcnow())
    rolled = client.get("/v1/account/budget", headers=auth(key)).get_json()

    assert full.status_code == 402, full.get_json()
    assert full.get_json()["error"]["used"] == charged > 0
    assert fresh["used"]["monthly"] == 0
    assert allowed.status_code == 202, allowed.get_json()
    for view in (held, rolled):
        assert datetime.fromisoformat(view["period_start"]) == end
        assert view["used"]["monthly"] == hold
    assert rolled["period_end"] == held["period_end"]
    assert client.post("/v1/jobs", json=CLUSTERING, headers=auth(key)).status_code == 402


def test_budgets_are_the_owners_to_set_and_validated(client: Any) -> None:
    key = funded(client)
    bad = [
        {"monthly_credits": 0},
        {"monthly_credits": 10, "per_operation": {"teleportation": 5}},
        {"monthly_credits": 10, "per_operation": {"clustering": 0}},
        {"per_operation": {"clustering": 5}},
    ]
    answers = [client.put("/v1/account/budget", json=b, headers=auth(key)) for b in bad]
    cleared = client.put("/v1/account/budget", json={"monthly_credits": None}, headers=auth(key))

    assert [a.status_code for a in answers] == [422] * 4
    assert cleared.get_json()["monthly_credits"] is None
    admin = join_team(client, key, "admin@example.com", "admin")
    as_admin = client.put(
        "/v1/account/budget", json={"monthly_credits": 5}, headers=auth(admin["key"])
    )
    assert as_admin.status_code == 403


def test_no_budget_no_lock_and_no_extra_reads(db_url: str) -> None:
    """The hot path of an account without a budget is what it was: no row lock, no sums."""
    with transaction() as session:
        account = make_account(session, credits=10_000)
        account_id = account.id
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    engine = get_engine(db_url)
    event.listen(engine, "before_cursor_execute", record)
    try:
        with transaction() as session:
            loaded = session.get(Account, account_id)
            assert loaded is not None
            statements.clear()
            submit_job(session, loaded, request(), HOLD_TTL)
    finally:
        event.remove(engine, "before_cursor_execute", record)

    assert not [s for s in statements if "FOR UPDATE" in s or "sum(" in s.lower()]


def test_the_estimate_says_when_a_budget_would_refuse(client: Any) -> None:
    key = funded(client)
    hold = hold_of(client, key, IMAGE)
    client.put("/v1/account/budget", json={"monthly_credits": hold}, headers=auth(key))
    before = client.post("/v1/jobs/estimate", json=IMAGE, headers=auth(key)).get_json()
    assert (before["affordable"], before["within_budget"]) == (True, True)

    assert client.post("/v1/jobs", json=IMAGE, headers=auth(key)).status_code == 202
    after = client.post("/v1/jobs/estimate", json=IMAGE, headers=auth(key)).get_json()
    assert (after["affordable"], after["within_budget"]) == (False, False)
    assert after["credits"] == hold
    assert client.post("/v1/jobs", json=IMAGE, headers=auth(key)).status_code == 402


RUN = {"keywords": ["running shoes", "trail running", "yoga mats"], "options": {"word_count": 200}}


def run_estimate(client: Any, key: str) -> dict[str, Any]:
    estimate = client.post("/v1/automations/estimate", json=RUN, headers=auth(key))
    assert estimate.status_code == 200, estimate.get_json()
    body: dict[str, Any] = estimate.get_json()
    return body


def test_an_automation_run_counts_against_the_budgets_as_a_whole(client: Any) -> None:
    """A run is refused when its worst case would cross a budget (whole, or its stage's
    against a per-operation one); once held, its pool counts as spent for later jobs."""
    key = funded(client, "run-budget@example.com")
    plan = run_estimate(client, key)
    worst = plan["credits"]
    articles = plan["stages"]["content_generation"]
    article_worst = articles["max_jobs"] * articles["credits_per_job"]

    client.put("/v1/account/budget", json={"monthly_credits": worst - 1}, headers=auth(key))
    over = run_estimate(client, key)
    refused = client.post("/v1/automations", json=RUN, headers=auth(key))
    assert (over["within_budget"], over["affordable"]) == (False, False)
    assert refused.status_code == 402, refused.get_json()
    error = refused.get_json()["error"]
    assert (error["code"], error["budget"], error["required"]) == (
        "budget_exceeded",
        "monthly",
        worst,
    )
    assert client.get("/v1/automations", headers=auth(key)).get_json()["data"] == []

    per_stage = {
        "monthly_credits": None,
        "per_operation": {"content_generation": article_worst - 1},
    }
    assert client.put("/v1/account/budget", json=per_stage, headers=auth(key)).status_code == 200
    refused = client.post("/v1/automations", json=RUN, headers=auth(key))
    assert refused.status_code == 402, refused.get_json()
    error = refused.get_json()["error"]
    assert (error["budget"], error["required"]) == ("content_generation", article_worst)

    client.put("/v1/account/budget", json={"monthly_credits": worst}, headers=auth(key))
    assert run_estimate(client, key)["within_budget"] is True
    accepted = client.post("/v1/automations", json=RUN, headers=auth(key))
    assert accepted.status_code == 202, accepted.get_json()
    after = client.post("/v1/jobs", json=IMAGE, headers=auth(key))  # the pool is all of it
    assert after.status_code == 402, after.get_json()
    assert after.get_json()["error"]["used"] == worst
    assert_audit_clean()
