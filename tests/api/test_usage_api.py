"""The usage endpoints through the API: shapes API.md fixes, auth, the CSV export, the
account's timezone, the cost estimate and the artifact listings."""

from __future__ import annotations

import base64
import csv
import io
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from billing import lifecycle
from billing.periods import add_months, next_period_end
from models import CreditReservation, Job, utcnow
from models.db import transaction
from tests.support import all_pages, auth, end_period_now, paid_account, register, settle

ADMIN = {"X-Admin-Token": "test-admin-token"}
CLUSTERING = {"operation": "clustering", "input": {"keywords": ["running shoes", "trail shoes"]}}


@pytest.fixture
def owner(client: Any) -> tuple[str, str, list[str]]:
    """A growth account with two sites and five settled clustering jobs."""
    key, account_id, sites = paid_account(client)
    jobs = []
    for n in range(5):
        body = {**CLUSTERING, "site_id": sites[n % 2]}
        job = client.post("/v1/jobs", json=body, headers=auth(key)).get_json()["id"]
        settle(job)
        jobs.append(job)
    return key, account_id, jobs


def test_summary_has_the_fields_api_md_fixes(
    client: Any, owner: tuple[str, str, list[str]]
) -> None:
    key, _, jobs = owner

    body = client.get("/v1/usage/summary", headers=auth(key)).get_json()

    assert set(body["period"]) >= {"start", "end", "days_remaining"}
    assert set(body["credits"]) >= {
        "balance", "reserved", "available", "plan_allocation", "used_this_period",
    }  # fmt: skip
    charged = sum(client.get(f"/v1/jobs/{j}", headers=auth(key)).get_json()["credits_charged"]
                  for j in jobs)  # fmt: skip
    assert body["credits"]["used_this_period"] == charged
    assert body["credits"]["plan_allocation"] == 40_000
    assert body["limits"]["sites"] == {"used": 2, "limit": 5, "display_name": "Sites"}
    assert set(body["limits"]) == {"sites", "users", "keywords", "ahrefs_queries"}


def charged(client: Any, key: str, job_id: str) -> int:
    job = client.get(f"/v1/jobs/{job_id}", headers=auth(key)).get_json()
    return int(job["credits_charged"])


def test_spending_counts_in_the_period_it_was_made_in_before_and_after_the_rollover(
    client: Any, no_enqueue: None
) -> None:
    """Between a period's end and the hourly rollover, the summary is already the next
    period's: spending from before the end stays in the old one, spending after it counts
    in the new one, and the rollover changes neither (nothing is counted twice)."""
    key, account_id, _ = paid_account(client, sites=0)
    before = client.post("/v1/jobs", json=CLUSTERING, headers=auth(key)).get_json()["id"]
    settle(before)
    old = client.get("/v1/usage/summary", headers=auth(key)).get_json()
    end = end_period_now(account_id)
    after = client.post("/v1/jobs", json=CLUSTERING, headers=auth(key)).get_json()["id"]
    settle(after)

    gap = client.get("/v1/usage/summary", headers=auth(key)).get_json()
    with transaction() as session:
        assert lifecycle.roll_over_periods(session, utcnow()).accounts == [account_id]
    rolled = client.get("/v1/usage/summary", headers=auth(key)).get_json()
    stored = client.get("/v1/account", headers=auth(key)).get_json()

    assert old["credits"]["used_this_period"] == charged(client, key, before) > 0
    next_end = next_period_end(add_months(end, -1), end)
    for body in (gap, rolled):
        period = body["period"]
        assert (datetime.fromisoformat(period["start"]), datetime.fromisoformat(period["end"])) == (
            end,
            next_end,
        )
        assert period["days_remaining"] >= 28
        assert body["credits"]["used_this_period"] == charged(client, key, after) > 0
    assert (stored["period_start"], stored["period_end"]) == (
        end.isoformat(),
        next_end.isoformat(),
    )


@pytest.mark.parametrize("days", ["7", "30", "90"])
def test_insights_have_the_fields_api_md_fixes(
    client: Any, owner: tuple[str, str, list[str]], days: str
) -> None:
    key, _, jobs = owner

    response = client.get(f"/v1/usage/insights?days={days}", headers=auth(key))

    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    fields = {
        "by_operation": {"operation", "credits", "jobs", "items"},
        "by_site": {"site_id", "credits", "jobs"},
        "by_model": {"model", "credits", "jobs"},
        "by_image_tier": {"tier", "credits", "images"},
        "by_source": {"source", "credits", "jobs"},
        "timeline": {"date", "credits"},
    }
    for section, names in fields.items():
        assert body[section], section
        assert all(names <= set(entry) for entry in body[section]), section
    clustering = next(e for e in body["by_operation"] if e["operation"] == "clustering")
    assert (clustering["jobs"], clustering["items"]) == (len(jobs), 2 * len(jobs))
    assert sum(p["credits"] for p in body["timeline"]) == clustering["credits"]
    assert [e["source"] for e in body["by_source"]] == ["manual", "automation"]


@pytest.mark.parametrize(
    "query",
    ["days=8", "days=", "from=2026-02-30", "days=7&from=2026-01-01", "to=2026-01-01",
     "from=2026-01-02&to=2026-01-01"],
)  # fmt: skip
def test_bad_insight_ranges_are_422(client: Any, query: str) -> None:
    key, _ = register(client)

    response = client.get(f"/v1/usage/insights?{query}", headers=auth(key))

    assert response.status_code == 422
    assert response.get_json()["error"]["code"] == "invalid_request"


# Each time here is out of reach of some arithmetic the window does: a zone's shift of the
# bound, the timeline's step past its last day, the day after `to`.
@pytest.mark.parametrize(
    ("zone", "query", "field"),
    [
        ("America/New_York", "from=0001-01-01T00:00:00%2B00:00&to=0001-01-03", "from"),
        ("Asia/Tokyo", "from=9999-12-31T20:00:00%2B00:00&to=9999-12-31T21:00:00%2B00:00", "from"),
        ("Pacific/Kiritimati", "from=9998-12-01&to=9999-12-25", "to"),
        ("UTC", "from=9999-12-30T00:00:00&to=9999-12-31T23:00:00", "from"),
    ],
)
def test_insight_ranges_beyond_representable_times_are_422_naming_the_bound(
    client: Any, zone: str, query: str, field: str
) -> None:
    key, account = register(client)
    client.patch("/v1/account", json={"timezone": zone}, headers=auth(key))

    for response in (
        client.get(f"/v1/usage/insights?{query}", headers=auth(key)),
        client.get(f"/v1/admin/accounts/{account['id']}/usage/insights?{query}", headers=ADMIN),
        client.get(f"/v1/usage/logs?{query}", headers=auth(key)),
    ):
        assert response.status_code == 422, response.get_json()
        assert response.get_json()["error"]["code"] == "invalid_request"
        assert field in response.get_json()["error"]["fields"]
    daily = client.get(f"/v1/admin/usage/daily?{query}", headers=ADMIN)
    assert daily.status_code == 422, daily.get_json()
    assert field in daily.get_json()["error"]["fields"]


def test_insight_ranges_at_the_edges_of_the_accepted_years_answer(client: Any) -> None:
    key, _ = register(client)
    client.patch("/v1/account", json={"timezone": "Pacific/Kiritimati"}, headers=auth(key))

    for query in ("from=0002-01-01&to=0002-12-31", "from=9998-01-01&to=9998-12-31"):
        response = client.get(f"/v1/usage/insights?{query}", headers=auth(key))
        assert response.status_code == 200, response.get_json()
        assert response.get_json()["range"]["granularity"] == "week"


def test_logs_page_and_the_csv_agree(client: Any, owner: tuple[str, str, list[str]]) -> None:
    key, _, jobs = owner

    rows = all_pages(client, key, "/v1/usage/logs", 2)
    as_csv = client.get("/v1/usage/logs?format=csv", headers=auth(key))
    by_accept = client.get("/v1/usage/logs", headers={**auth(key), "Accept": "text/csv"})

    assert sorted(r["job_id"] for r in rows) == sorted(jobs)
    assert set(rows[0]) >= {
        "id", "created_at", "operation", "model", "site_id", "job_id", "credits",
        "tokens_input", "tokens_output", "cost_usd",
    }  # fmt: skip
    assert as_csv.status_code == 200
    assert as_csv.mimetype == "text/csv"
    assert "attachment" in as_csv.headers["Content-Disposition"]
    assert by_accept.data == as_csv.data
    parsed = list(csv.DictReader(io.StringIO(as_csv.data.decode())))
    assert [r["id"] for r in parsed] == [str(r["id"]) for r in rows]
    assert [r["cost_usd"] for r in parsed] == [r["cost_usd"] for r in rows]
    assert as_csv.data.decode().count("\r\n") == len(rows) + 1


def test_log_filters_through_the_api(client: Any, owner: tuple[str, str, list[str]]) -> None:
    key, _, jobs = owner
    site = client.get(f"/v1/jobs/{jobs[1]}", headers=auth(key)).get_json()["site_id"]
    today = utcnow().date()

    def ids(**query: str) -> list[str]:
        response = client.get("/v1/usage/logs", query_string=query, headers=auth(key))
        assert response.status_code == 200, response.get_json()
        return sorted(r["job_id"] for r in response.get_json()["data"])

    assert ids(site_id=site) == sorted(jobs[1::2])
    assert ids(job_id=jobs[0]) == [jobs[0]]
    assert ids(operation="clustering", model="gpt-4o-mini") == sorted(jobs)
    assert ids(operation="image_generation") == []
    assert ids(**{"from": (today + timedelta(days=1)).isoformat()}) == []
    assert ids(**{"from": (today - timedelta(days=1)).isoformat(), "to": today.isoformat()}) == (
        sorted(jobs)
    )


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("operation=mining", 422),
        ("model=gpt-9", 422),
        ("site_id=site_nope", 404),
        ("job_id=job_nope", 404),
        ("format=xml", 422),
        ("limit=0", 422),
        ("limit=101", 422),
        ("cursor=!!!", 422),
        ("cursor=MjAyNi0wMS0wMXx4", 422),
        ("from=later", 422),
    ],
)
def test_bad_log_queries_are_clear_errors(client: Any, query: str, status: int) -> None:
    key, _ = register(client)

    response = client.get(f"/v1/usage/logs?{query}", headers=auth(key))

    assert response.status_code == status, response.get_json()
    assert response.get_json()["error"]["message"]


def cursor_of(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        "0001-01-01T00:00:00+01:00|1",  # before 0001-01-01 in UTC
        "9999-12-31T23:00:00-02:00|1",  # after 9999-12-31 in UTC
        "2026-01-01T00:00:00+00:00|\u00b2",  # a digit int() does not read
        "2026-01-01T00:00:00+00:00|99999999999999999999",  # beyond BIGINT
        "2026-01-01T00:00:00+00:00|0",
    ],
)
def test_log_cursors_that_name_no_row_are_422(client: Any, cursor: str) -> None:
    key, account = register(client)

    for response in (
        client.get(f"/v1/usage/logs?cursor={cursor_of(cursor)}", headers=auth(key)),
        client.get(
            f"/v1/admin/accounts/{account['id']}/usage/logs?cursor={cursor_of(cursor)}",
            headers=ADMIN,
        ),
    ):
        assert response.status_code == 422, response.get_json()
        assert response.get_json()["error"]["code"] == "invalid_request"
        assert response.get_json()["error"]["fields"] == {"cursor": "invalid"}


@pytest.mark.parametrize(
    "cursor",
    [
        "0001-01-01T00:00:00+01:00|job_x",
        "9999-12-31T23:00:00-02:00|job_x",
        "2026-01-01T00:00:00+00:00|job_\x00",  # PostgreSQL text holds no NUL
    ],
)
def test_time_cursors_that_name_no_row_are_422_on_every_newest_first_listing(
    client: Any, cursor: str
) -> None:
    key, _ = register(client)

    for path in ("/v1/jobs", "/v1/admin/accounts"):
        headers = ADMIN if path.startswith("/v1/admin") else auth(key)
        response = client.get(f"{path}?cursor={cursor_of(cursor)}", headers=headers)
        assert response.status_code == 422, (path, response.get_json())
        assert response.get_json()["error"]["code"] == "invalid_request"
        assert response.get_json()["error"]["fields"] == {"cursor": "invalid"}


def test_another_accounts_usage_never_shows(client: Any, owner: tuple[str, str, list[str]]) -> None:
    key, _, jobs = owner
    other, _ = register(client, "other@example.com")
    job = client.post("/v1/jobs", json=CLUSTERING, headers=auth(other)).get_json()["id"]
    settle(job)

    theirs = client.get("/v1/usage/logs", headers=auth(other)).get_json()["data"]
    mine = client.get("/v1/usage/logs", headers=auth(key)).get_json()["data"]
    csv_mine = client.get("/v1/usage/logs?format=csv", headers=auth(key)).data.decode()
    insights = client.get("/v1/usage/insights", headers=auth(other)).get_json()

    assert [r["job_id"] for r in theirs] == [job]
    assert job not in {r["job_id"] for r in mine}
    assert job not in csv_mine
    assert insights["totals"]["jobs"] == 1
    assert client.get(f"/v1/clusters?job_id={jobs[0]}", headers=auth(other)).status_code == 404


def test_admin_sees_any_accounts_usage_and_platform_totals(
    client: Any, owner: tuple[str, str, list[str]]
) -> None:
    key, account_id, jobs = owner
    base = f"/v1/admin/accounts/{account_id}/usage"

    for path in ("summary", "insights?days=7", "logs", "logs?format=csv"):
        assert client.get(f"{base}/{path}").status_code == 401
        assert (
            client.get(f"{base}/{path}", headers=ADMIN).data
            == client.get(f"/v1/usage/{path}", headers=auth(key)).data
        ), path
    assert client.get("/v1/admin/accounts/acc_nope/usage/summary", headers=ADMIN).status_code == 404
    daily = client.get("/v1/admin/usage/daily?days=7", headers=ADMIN).get_json()
    today = daily["data"][-1]
    assert today["date"] == utcnow().date().isoformat()
    assert today["jobs"]["succeeded"] == len(jobs)
    assert today["credits"] == daily["totals"]["credits"] > 0
    assert isinstance(today["cost_usd"], str)
    assert client.get("/v1/admin/usage/daily").status_code == 401


def test_the_owner_sets_the_timezone_and_insights_use_it(client: Any) -> None:
    key, _ = register(client)

    changed = client.patch("/v1/account", json={"timezone": "Asia/Kolkata"}, headers=auth(key))
    insights = client.get("/v1/usage/insights?days=7", headers=auth(key)).get_json()
    bad = client.patch("/v1/account", json={"timezone": "Mars/Olympus"}, headers=auth(key))
    unchanged = client.patch("/v1/account", json={}, headers=auth(key))
    reset = client.patch("/v1/account", json={"timezone": None}, headers=auth(key))

    assert changed.status_code == 200
    assert changed.get_json()["timezone"] == "Asia/Kolkata"
    assert insights["range"]["timezone"] == "Asia/Kolkata"
    assert insights["range"]["from"].endswith("+05:30")
    assert bad.status_code == 422
    assert bad.get_json()["error"]["fields"] == {"timezone": "an IANA time zone name"}
    assert unchanged.get_json()["timezone"] == "Asia/Kolkata"
    assert reset.get_json()["timezone"] is None


def test_the_estimate_is_the_hold_the_submission_takes(client: Any) -> None:
    key, account = register(client)
    body = {"operation": "content_generation", "input": {"title": "Trail shoes", "word_count": 900}}
    with transaction() as session:
        jobs_before = session.scalar(select(func.count()).select_from(Job))

    estimate = client.post("/v1/jobs/estimate", json=body, headers=auth(key))
    with transaction() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == jobs_before
        assert session.scalar(select(func.count()).select_from(CreditReservation)) == 0
    submitted = client.post("/v1/jobs", json=body, headers=auth(key)).get_json()

    assert estimate.status_code == 200
    assert estimate.get_json() == {
        "operation": "content_generation",
        "model": submitted["model"],
        "credits": submitted["reserved_credits"],
        "affordable": True,
        "available": account["credits"]["available"],
        "within_budget": True,
    }


def test_the_estimate_says_when_it_is_not_affordable_and_refuses_what_submit_refuses(
    client: Any,
) -> None:
    key, account = register(client)
    client.post(
        f"/v1/admin/accounts/{account['id']}/credits",
        json={"amount": -1995, "reason": "drain"},
        headers=ADMIN,
    )
    body = {"operation": "content_generation", "input": {"title": "A long article"}}

    poor = client.post("/v1/jobs/estimate", json=body, headers=auth(key)).get_json()
    model = client.post("/v1/jobs/estimate", json={**body, "model": "gpt-4o"}, headers=auth(key))
    site = client.post("/v1/jobs/estimate", json={**body, "site_id": "site_x"}, headers=auth(key))
    bad = client.post("/v1/jobs/estimate", json={**body, "input": {}}, headers=auth(key))

    assert (poor["affordable"], poor["available"]) == (False, 5)
    assert poor["credits"] > 5
    assert (model.status_code, model.get_json()["error"]["code"]) == (403, "model_not_allowed")
    assert site.status_code == 404
    assert bad.status_code == 422


def test_artifact_listings_filter_by_site_and_job_and_page(
    client: Any, owner: tuple[str, str, list[str]]
) -> None:
    key, _, jobs = owner
    site = client.get(f"/v1/jobs/{jobs[0]}", headers=auth(key)).get_json()["site_id"]

    listed = all_pages(client, key, "/v1/clusters", 3)
    by_site = client.get(f"/v1/clusters?site_id={site}", headers=auth(key)).get_json()["data"]
    by_job = client.get(f"/v1/clusters?job_id={jobs[2]}", headers=auth(key)).get_json()["data"]

    assert len(listed) == 2 * len(jobs) == len({c["id"] for c in listed})
    assert [c["id"] for c in listed] == sorted((c["id"] for c in listed), reverse=True)
    assert set(listed[0]) == {"id", "job_id", "site_id", "name", "keywords", "created_at"}
    assert {c["job_id"] for c in by_site} == set(jobs[0::2])
    assert {c["job_id"] for c in by_job} == {jobs[2]}
    for path in ("ideas", "contents", "image-prompts", "images"):
        response = client.get(f"/v1/{path}", headers=auth(key))
        assert response.get_json() == {"data": [], "next_cursor": None}, path
    assert client.get("/v1/images?site_id=site_nope", headers=auth(key)).status_code == 404
    huge = "OTk5OTk5OTk5OTk5OTk5OTk5OTk5"  # 9999999999999999999999: beyond any id
    assert client.get(f"/v1/clusters?cursor={huge}", headers=auth(key)).status_code == 422
