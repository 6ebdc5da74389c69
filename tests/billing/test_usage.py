"""Usage analytics (billing/usage.py) on SQLite and PostgreSQL: every insight is a sum of
the ledger's deductions, local days follow the account's zone through DST, logs page
exactly, the CSV export agrees with the JSON, and no other account's row ever shows."""

from __future__ import annotations

import csv
import io
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select, update

import billing.ledger
from billing import usage
from billing.errors import InvalidInput, NotFound
from billing.pricing import Usage
from billing.runs import JobRun, complete_job, start_job
from billing.submission import JobRequest, submit_job
from models import (
    Account,
    Base,
    Cluster,
    Content,
    CreditTransaction,
    CreditUsageLog,
    Idea,
    Image,
    ImagePrompt,
    Job,
    Site,
    as_utc,
)
from models.db import transaction
from tests.factories import HOLD_TTL, make_account, make_job

NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
INPUTS: dict[str, dict[str, Any]] = {
    "clustering": {"keywords": ["running shoes", "trail shoes", "yoga mats"]},
    "idea_generation": {"cluster": {"name": "Running", "keywords": ["running shoes"]}, "count": 2},
    "content_generation": {"title": "How to choose running shoes", "word_count": 300},
    "image_prompt_extraction": {"text": "A runner at dawn. Her shoes are muddy.", "count": 2},
    "image_generation": {"prompt": "a runner on a misty trail", "count": 2},
}
ARTIFACTS = {
    "clustering": (Cluster, {"name": "c", "keywords": ["k"]}),
    "idea_generation": (Idea, {"title": "an idea"}),
    "content_generation": (Content, {"title": "t", "body": "b", "word_count": 1}),
    "image_prompt_extraction": (ImagePrompt, {"prompt": "p"}),
    "image_generation": (Image, {"url": "http://img.example/1.png", "prompt": "p", "model": "m"}),
}
ARTIFACT_MODELS = [model for model, _ in ARTIFACTS.values()]


def artifacts_for(run: JobRun, count: int) -> list[Base]:
    model, fields = ARTIFACTS[run.operation]
    owner = {"account_id": run.account_id, "job_id": run.job_id, "site_id": run.site_id}
    return [model(**fields, **owner) for _ in range(count)]


def run_job(
    url: str,
    monkeypatch: pytest.MonkeyPatch,
    account_id: str,
    operation: str,
    *,
    at: datetime,
    site_id: str | None = None,
    model: str | None = None,
    items: int = 2,
    job_input: dict[str, Any] | None = None,
    automation_id: str | None = None,
) -> str:
    """Submit, start and settle one job through billing, its ledger rows dated `at`
    (`automation_id`: as an automation run will have made the job)."""
    with transaction(url) as session:
        account = session.get(Account, account_id)
        assert account is not None
        job_input = job_input or INPUTS[operation]
        if operation == "image_generation":
            job_input = {**job_input, "count": items}  # charged per image, within the hold
        request = JobRequest(operation, job_input, site_id=site_id, model=model)
        job = submit_job(session, account, request, HOLD_TTL).job
        job.automation_id = automation_id
        job_id = job.id
    with monkeypatch.context() as patched, transaction(url) as session:
        patched.setattr(billing.ledger, "utcnow", lambda: at)
        run = start_job(session, job_id)
        assert run is not None
        spent = Usage(images=items) if operation == "image_generation" else Usage(300, 40 * items)
        assert complete_job(session, run, spent, {}, artifacts_for(run, items))
    return job_id


@dataclass(frozen=True)
class Spending:
    account_id: str
    other_id: str
    sites: tuple[str, str]
    jobs: list[str]


@pytest.fixture
def spending(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Spending:
    """Every operation on two sites and two models, an older job, another account's job."""
    with transaction(db_url) as session:
        account = make_account(session, "growth", credits=100_000)
        other = make_account(session, "growth", credits=10_000, name="other")
        sites = [Site(account_id=account.id, name=f"site {n}") for n in (1, 2)]
        session.add_all(sites)
        session.flush()
        ids = (account.id, other.id, sites[0].id, sites[1].id)
    account_id, other_id, first, second = ids
    jobs = []
    for n, operation in enumerate(INPUTS):
        jobs.append(
            run_job(db_url, monkeypatch, account_id, operation, site_id=first,
                    at=NOW - timedelta(days=1, hours=n), items=n + 1)
        )  # fmt: skip
        jobs.append(
            run_job(
                db_url, monkeypatch, account_id, operation, site_id=second,
                model="dall-e-3" if operation == "image_generation" else "gpt-4o",
                at=NOW - timedelta(days=3, minutes=n), items=2,
            )
        )  # fmt: skip
    jobs.append(
        run_job(db_url, monkeypatch, account_id, "image_generation", model="gpt-image-1",
                at=NOW - timedelta(days=10), items=3)
    )  # fmt: skip
    run_job(db_url, monkeypatch, account_id, "clustering", at=NOW - timedelta(days=40))
    run_job(db_url, monkeypatch, other_id, "clustering", site_id=None, at=NOW - timedelta(days=1))
    return Spending(account_id, other_id, (first, second), jobs)


def insights_for(url: str, account_id: str, days: str = "30") -> dict[str, Any]:
    with transaction(url) as session:
        account = session.get(Account, account_id)
        assert account is not None
        span = usage.window(usage.account_zone(account), NOW, days=days, start=None, end=None)
        return usage.insights(session, account, span)


def deductions_by(url: str, account_id: str, key: Any, since: datetime) -> dict[Any, list[int]]:
    """[credits, jobs] per `key` of the ledger's own deductions since `since`."""
    with transaction(url) as session:
        rows = session.execute(
            select(key, -func.sum(CreditTransaction.amount), func.count())
            .join(Job, Job.id == CreditTransaction.job_id)
            .where(
                CreditTransaction.account_id == account_id,
                CreditTransaction.type == "deduction",
                CreditTransaction.created_at >= since,
            )
            .group_by(key)
        )
        return {k: [int(credits), int(jobs)] for k, credits, jobs in rows}


def by(entries: list[dict[str, Any]], key: str) -> dict[Any, list[int]]:
    return {e[key]: [e["credits"], e["jobs"]] for e in entries if e["jobs"]}


THIRTY_DAYS_AGO = datetime(2026, 5, 17, tzinfo=UTC)  # the 30-day window's first midnight


def test_each_breakdown_sums_the_ledgers_deductions(db_url: str, spending: Spending) -> None:
    body = insights_for(db_url, spending.account_id)

    since = THIRTY_DAYS_AGO
    assert by(body["by_operation"], "operation") == deductions_by(
        db_url, spending.account_id, Job.operation, since
    )
    assert by(body["by_site"], "site_id") == deductions_by(
        db_url, spending.account_id, Job.site_id, since
    )
    assert by(body["by_model"], "model") == deductions_by(
        db_url, spending.account_id, Job.model, since
    )
    total = deductions_by(db_url, spending.account_id, Job.account_id, since)
    assert [body["totals"]["credits"], body["totals"]["jobs"]] == total[spending.account_id]
    assert body["totals"]["jobs"] == len(spending.jobs)
    for section in ("by_operation", "by_site", "by_model", "by_source", "timeline"):
        assert sum(e["credits"] for e in body[section]) == body["totals"]["credits"], section


def test_the_breakdowns_match_the_usage_logs_rows_and_usd(db_url: str, spending: Spending) -> None:
    body = insights_for(db_url, spending.account_id)

    with transaction(db_url) as session:
        logs = session.execute(
            select(CreditUsageLog).where(
                CreditUsageLog.account_id == spending.account_id,
                CreditUsageLog.created_at >= THIRTY_DAYS_AGO,
            )
        ).scalars()
        rows = list(logs)
    assert body["totals"]["credits"] == sum(row.credits for row in rows)
    assert body["totals"]["tokens_input"] == sum(row.tokens_in for row in rows)
    assert body["totals"]["images"] == sum(row.images for row in rows)
    assert Decimal(body["totals"]["cost_usd"]) == sum(row.cost_usd for row in rows)
    assert all(isinstance(e["cost_usd"], str) for e in body["by_model"])
    assert sum(Decimal(e["cost_usd"]) for e in body["by_model"]) == Decimal(
        body["totals"]["cost_usd"]
    )


def test_items_created_match_the_stored_artifacts(db_url: str, spending: Spending) -> None:
    body = insights_for(db_url, spending.account_id)

    items = {e["operation"]: e["items"] for e in body["by_operation"]}
    labels = {e["operation"]: e["label"] for e in body["by_operation"]}
    with transaction(db_url) as session:
        in_window = select(CreditUsageLog.job_id).where(
            CreditUsageLog.account_id == spending.account_id,
            CreditUsageLog.created_at >= THIRTY_DAYS_AGO,
        )
        stored = {
            operation: session.scalar(
                select(func.count()).select_from(model).where(model.job_id.in_(in_window))
            )
            for operation, (model, _) in ARTIFACTS.items()
        }
    assert items == stored
    assert labels["content_generation"] == "articles"
    assert list(items) == list(INPUTS)  # every operation listed, in the registry's order


def test_image_tiers_come_from_the_models_tier(db_url: str, spending: Spending) -> None:
    body = insights_for(db_url, spending.account_id)

    tiers = {e["tier"]: (e["credits"], e["images"], e["jobs"]) for e in body["by_image_tier"]}
    # hidream-full 5 images x 1, dall-e-3 2 x 5, gpt-image-1 3 x 15 (catalog prices)
    assert tiers == {"basic": (5, 5, 1), "quality": (10, 2, 1), "premium": (45, 3, 1)}


def test_a_job_of_an_automation_run_counts_as_automation(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with transaction(db_url) as session:
        account_id = make_account(session, "growth").id
    day = NOW - timedelta(days=1)
    manual = run_job(db_url, monkeypatch, account_id, "clustering", at=day)
    automated = [
        run_job(db_url, monkeypatch, account_id, operation, at=day, automation_id="auto_1")
        for operation in ("clustering", "image_generation")
    ]
    with transaction(db_url) as session:
        rows = session.execute(select(CreditUsageLog.job_id, CreditUsageLog.credits))
        credits = {job_id: spent for job_id, spent in rows}
        logs = usage.stream_logs(session, account_id, usage.LogFilter())
        sources = {row.job_id: usage.log_view(row)["source"] for row in logs}

    body = insights_for(db_url, account_id)

    split = {e["source"]: (e["credits"], e["jobs"]) for e in body["by_source"]}
    assert split == {
        "manual": (credits[manual], 1),
        "automation": (sum(credits[job] for job in automated), 2),
    }
    assert sources == {manual: "manual", **dict.fromkeys(automated, "automation")}


def test_billed_jobs_count_whatever_status_they_ended_in(db_url: str, spending: Spending) -> None:
    """Failed jobs whose provider answer was billed get a usage log too (issue 11's
    runtime change): the figures follow the usage logs, not the job's status."""
    before = insights_for(db_url, spending.account_id)
    with transaction(db_url) as session:
        session.execute(update(Job).where(Job.id == spending.jobs[0]).values(status="failed"))

    assert insights_for(db_url, spending.account_id) == before


def test_another_accounts_rows_never_show(db_url: str, spending: Spending) -> None:
    body = insights_for(db_url, spending.other_id)

    assert body["totals"]["jobs"] == 1
    assert [e["site_id"] for e in body["by_site"]] == [None]
    assert by(body["by_operation"], "operation") == deductions_by(
        db_url, spending.other_id, Job.operation, THIRTY_DAYS_AGO
    )


@pytest.mark.parametrize(("days", "points", "step"), [("7", 7, 1), ("30", 30, 1), ("90", 14, 7)])
def test_the_timeline_is_zero_filled_and_sums_to_the_total(
    db_url: str, spending: Spending, days: str, points: int, step: int
) -> None:
    body = insights_for(db_url, spending.account_id, days)

    timeline = body["timeline"]
    assert len(timeline) == points
    assert sum(p["credits"] for p in timeline) == body["totals"]["credits"]
    assert sum(p["jobs"] for p in timeline) == body["totals"]["jobs"]
    dates = [date.fromisoformat(p["date"]) for p in timeline]
    assert dates[-1] <= NOW.date() < dates[-1] + timedelta(days=step)
    assert dates[0] == NOW.date() - timedelta(days=int(days) - 1)
    if step == 7:
        assert all(d.weekday() == 0 for d in dates[1:])
    assert body["range"]["granularity"] == ("week" if step == 7 else "day")


def test_the_timeline_buckets_days_in_the_accounts_zone(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with transaction(db_url) as session:
        account_id = make_account(session, "growth").id
    # 23:30 UTC on March 28 is 00:30 on March 29 in Paris (UTC+1 until 01:00 UTC that day)
    late = datetime(2026, 3, 28, 23, 30, tzinfo=UTC)
    run_job(db_url, monkeypatch, account_id, "image_generation", at=late, items=3)

    def timeline(zone: str | None) -> dict[str, int]:
        with transaction(db_url) as session:
            account = session.get(Account, account_id)
            assert account is not None
            usage.set_timezone(session, account, zone)
            span = usage.window(
                usage.account_zone(account), NOW, days=None, start="2026-03-27", end="2026-03-30"
            )
            points = usage.insights(session, account, span)["timeline"]
        return {p["date"]: p["credits"] for p in points if p["credits"]}

    assert timeline(None) == {"2026-03-28": 3}
    assert timeline("Europe/Paris") == {"2026-03-29": 3}
    assert timeline("America/New_York") == {"2026-03-28": 3}


# --- local days, offsets and windows ------------------------------------------------------


def test_offset_pieces_find_each_dst_step_to_the_second() -> None:
    start, end = datetime(2026, 1, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC)

    assert usage.offset_pieces(ZoneInfo("Europe/Paris"), start, end) == [
        (start, 3600),
        (datetime(2026, 3, 29, 1, 0, tzinfo=UTC), 7200),
        (datetime(2026, 10, 25, 1, 0, tzinfo=UTC), 3600),
    ]
    assert usage.offset_pieces(ZoneInfo("Asia/Kolkata"), start, end) == [(start, 19800)]
    assert usage.offset_pieces(UTC, start, end) == [(start, 0)]


ZONES = ["UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe",
         "Pacific/Chatham", "America/St_Johns"]  # fmt: skip


def edge_instants() -> Iterator[datetime]:
    """Random instants over 2026, plus every zone's local midnights and DST steps, +-1 s."""
    rng = random.Random(14)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for _ in range(150):
        yield start + timedelta(
            seconds=rng.randrange(365 * 86400), microseconds=rng.randrange(10**6)
        )
    for name in ZONES:
        zone = ZoneInfo(name)
        pieces = usage.offset_pieces(zone, start, start + timedelta(days=365))
        marks = [at for at, _ in pieces[1:]]
        marks += [datetime(2026, m, 1, tzinfo=zone).astimezone(UTC) for m in (3, 4, 10, 11)]
        for mark in marks:
            yield from (mark - timedelta(seconds=1), mark, mark + timedelta(microseconds=1))
            yield mark - timedelta(microseconds=1)


def test_local_day_in_sql_is_the_local_date_in_every_zone(db_url: str) -> None:
    instants = sorted(set(edge_instants()))
    with transaction(db_url) as session:
        account = make_account(session, credits=0)
        for at in instants:
            job = make_job(session, account)
            session.add(
                CreditUsageLog(
                    account_id=account.id, job_id=job.id, operation="image_generation",
                    model="hidream-full", credits=1, cost_usd=Decimal("0.01"), created_at=at,
                )
            )  # fmt: skip
        session.flush()
        start, end = datetime(2025, 12, 31, tzinfo=UTC), datetime(2027, 1, 2, tzinfo=UTC)
        for name in ZONES:
            zone = ZoneInfo(name)
            day = usage.local_day(CreditUsageLog.created_at, zone, start, end)
            rows = session.execute(
                select(CreditUsageLog.created_at, day).where(
                    CreditUsageLog.account_id == account.id
                )
            )
            got = {as_utc(at): date(1970, 1, 1) + timedelta(days=n) for at, n in rows}
            assert got == {at: at.astimezone(zone).date() for at in instants}, name


def test_window_of_days_covers_whole_local_days_up_to_today() -> None:
    paris = ZoneInfo("Europe/Paris")

    span = usage.window(paris, NOW, days="7", start=None, end=None)

    assert span.start == datetime(2026, 6, 8, 22, 0, tzinfo=UTC)  # June 9, 00:00 in Paris
    assert span.end == datetime(2026, 6, 15, 22, 0, tzinfo=UTC)
    assert (span.first_day, span.last_day, span.days, span.weekly) == (
        date(2026, 6, 9), date(2026, 6, 15), 7, False,
    )  # fmt: skip
    assert usage.window(UTC, NOW, days=None, start=None, end=None).days == usage.DEFAULT_DAYS


def test_window_from_to_takes_dates_as_local_days_and_times_as_given() -> None:
    paris = ZoneInfo("Europe/Paris")

    span = usage.window(paris, NOW, days=None, start="2026-01-01", end="2026-03-31")
    assert (span.first_day, span.last_day, span.weekly) == (
        date(2026, 1, 1), date(2026, 3, 31), True,
    )  # fmt: skip
    assert span.start == datetime(2025, 12, 31, 23, 0, tzinfo=UTC)
    exact = usage.window(paris, NOW, days=None, start="2026-06-01T08:00:00Z", end=None)
    assert exact.start == datetime(2026, 6, 1, 8, 0, tzinfo=UTC)
    assert exact.last_day == date(2026, 6, 15)


@pytest.mark.parametrize(
    ("days", "start", "end", "field"),
    [
        ("8", None, None, "days"),
        ("x", None, None, "days"),
        ("7", "2026-01-01", None, "days"),
        (None, None, "2026-01-01", "from"),
        (None, "2026-02-01", "2026-01-01", "from"),
        (None, "2026-13-01", None, "from"),
        (None, "yesterday", None, "from"),
        (None, "2025-01-01", "2026-06-01", "to"),
        (None, "9998-12-25", "9999-12-31", "to"),
        (None, "0001-01-02", "0001-01-03", "from"),
        (None, "0001-01-01T00:00:00+05:00", None, "from"),
    ],
)
def test_window_refuses_bad_ranges_with_the_field_named(
    days: str | None, start: str | None, end: str | None, field: str
) -> None:
    with pytest.raises(InvalidInput) as refused:
        usage.window(UTC, NOW, days=days, start=start, end=end)
    assert field in refused.value.details["fields"]


def test_timezones_are_checked_against_the_tz_database(db_url: str) -> None:
    with transaction(db_url) as session:
        account = make_account(session)
        usage.set_timezone(session, account, "Asia/Kathmandu")
        assert str(usage.account_zone(account)) == "Asia/Kathmandu"
        for bad in ("Mars/Olympus", "../../etc/passwd", "", "europe/paris"):
            with pytest.raises(InvalidInput):
                usage.set_timezone(session, account, bad)
        usage.set_timezone(session, account, None)
        assert usage.account_zone(account) is UTC


# --- summary -------------------------------------------------------------------------------


def test_summary_counts_this_periods_spending_and_names_the_limits(
    db_url: str, spending: Spending
) -> None:
    with transaction(db_url) as session:
        session.execute(
            update(Account)
            .where(Account.id == spending.account_id)
            .values(period_start=NOW - timedelta(days=5), period_end=NOW + timedelta(days=25.5))
        )
    with transaction(db_url) as session:
        account = session.get(Account, spending.account_id)
        assert account is not None
        body = usage.summary(session, account, NOW)
        spent = session.scalar(
            select(func.sum(CreditUsageLog.credits)).where(
                CreditUsageLog.account_id == account.id,
                CreditUsageLog.created_at >= NOW - timedelta(days=5),
            )
        )

    assert body["credits"]["used_this_period"] == spent
    assert body["credits"]["balance"] == account.credits
    assert body["credits"]["plan_allocation"] == 40_000
    assert body["period"]["days_remaining"] == 26
    assert body["limits"]["sites"] == {"used": 2, "limit": 5, "display_name": "Sites"}
    assert body["limits"]["ahrefs_queries"]["display_name"] == "Keyword Research Queries"


def test_summary_without_a_period_uses_the_calendar_month(db_url: str) -> None:
    with transaction(db_url) as session:
        account = make_account(session)
        body = usage.summary(session, account, NOW)

    assert body["period"]["start"] == "2026-06-01T00:00:00+00:00"
    assert body["period"]["end"] == "2026-07-01T00:00:00+00:00"
    assert body["period"]["days_remaining"] == 16
    assert body["credits"]["used_this_period"] == 0


# --- logs ------------------------------------------------------------------------------------


def all_logs(url: str, account_id: str, where: usage.LogFilter, limit: int) -> list[list[Any]]:
    """Every page of the listing, followed by its cursors."""
    pages, cursor = [], None
    while True:
        with transaction(url) as session:
            page = usage.list_logs(session, account_id, where, cursor=cursor, limit=limit)
        pages.append([usage.log_view(row) for row in page.rows])
        if page.next_cursor is None:
            return pages
        cursor = page.next_cursor


@pytest.fixture
def tied(db_url: str, monkeypatch: pytest.MonkeyPatch) -> tuple[str, list[str]]:
    """Six settled jobs, two pairs of them at the very same instant."""
    with transaction(db_url) as session:
        account_id = make_account(session, "growth").id
    times = [NOW - timedelta(hours=h) for h in (1, 2, 2, 3, 3, 4)]
    jobs = [run_job(db_url, monkeypatch, account_id, "clustering", at=at, items=1) for at in times]
    return account_id, jobs


@pytest.mark.parametrize(("limit", "pages"), [(1, 6), (2, 3), (3, 2), (5, 2), (6, 1), (7, 1)])
def test_log_pages_are_exact_at_page_boundaries_and_ties(
    db_url: str, tied: tuple[str, list[str]], limit: int, pages: int
) -> None:
    account_id, jobs = tied

    listed = all_logs(db_url, account_id, usage.LogFilter(), limit)

    assert len(listed) == pages
    assert all(len(page) == limit for page in listed[:-1])
    rows = [row for page in listed for row in page]
    assert len({row["id"] for row in rows}) == len(jobs) == len(rows)
    keys = [(row["created_at"], row["id"]) for row in rows]
    assert keys == sorted(keys, reverse=True)


def test_log_filters_select_exactly_the_matching_rows(db_url: str, spending: Spending) -> None:
    with transaction(db_url) as session:
        account = session.get(Account, spending.account_id)
        assert account is not None
        everything = [
            usage.log_view(row) for row in usage.stream_logs(session, account.id, usage.LogFilter())
        ]
        cases = {
            "operation": (
                dict(operation="content_generation"),
                lambda r: r["operation"] == "content_generation",
            ),
            "site": (dict(site_id=spending.sites[1]), lambda r: r["site_id"] == spending.sites[1]),
            "model": (dict(model="gpt-4o"), lambda r: r["model"] == "gpt-4o"),
            "job": (dict(job_id=spending.jobs[2]), lambda r: r["job_id"] == spending.jobs[2]),
            "range": (
                dict(start="2026-06-12", end="2026-06-12"),
                lambda r: r["created_at"].startswith("2026-06-12"),
            ),
            "combined": (
                dict(operation="image_generation", site_id=spending.sites[0]),
                lambda r: (
                    r["operation"] == "image_generation" and r["site_id"] == spending.sites[0]
                ),
            ),
        }
        filters = {
            name: usage.log_filter(session, account, **kwargs)
            for name, (kwargs, _) in cases.items()
        }
    assert len(everything) == len(spending.jobs) + 1
    for name, (_, matches) in cases.items():
        got = [row for page in all_logs(db_url, spending.account_id, filters[name], 2)
               for row in page]  # fmt: skip
        expected = [row for row in everything if matches(row)]
        assert got == expected, name
        assert expected, name


def test_log_filters_refuse_what_is_not_the_accounts(db_url: str, spending: Spending) -> None:
    with transaction(db_url) as session:
        account = session.get(Account, spending.other_id)
        assert account is not None
        with pytest.raises(NotFound):
            usage.log_filter(session, account, site_id=spending.sites[0])
        with pytest.raises(NotFound):
            usage.log_filter(session, account, job_id=spending.jobs[0])
        for bad in (
            dict(operation="mining"),
            dict(model="gpt-9"),
            dict(start="2026-06-02", end="2026-06-01"),
            dict(start="soon"),
        ):
            with pytest.raises(InvalidInput):
                usage.log_filter(session, account, **bad)


def test_another_accounts_logs_never_show(db_url: str, spending: Spending) -> None:
    listed = all_logs(db_url, spending.other_id, usage.LogFilter(), 100)

    assert [row["job_id"] for row in listed[0]] != []
    assert not {row["job_id"] for row in listed[0]} & set(spending.jobs)
    assert len(listed[0]) == 1


def test_the_csv_has_a_header_and_one_line_per_row_equal_to_the_json(
    db_url: str, spending: Spending
) -> None:
    with transaction(db_url) as session:
        text = "".join(
            usage.csv_chunks(usage.stream_logs(session, spending.account_id, usage.LogFilter()))
        )
    listed = [row for page in all_logs(db_url, spending.account_id, usage.LogFilter(), 3)
              for row in page]  # fmt: skip

    lines = text.splitlines()
    assert lines[0] == ",".join(usage.CSV_COLUMNS)
    assert len(lines) == 1 + len(listed)
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert parsed == [{k: "" if row[k] is None else str(row[k]) for k in usage.CSV_COLUMNS}
                      for row in listed]  # fmt: skip


def test_the_csv_neutralises_spreadsheet_formulas(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with transaction(db_url) as session:
        account_id = make_account(session, "growth").id
    title = '=HYPERLINK("http://evil.example","click")'
    run_job(db_url, monkeypatch, account_id, "content_generation", at=NOW,
            job_input={"title": title, "word_count": 300})  # fmt: skip

    with transaction(db_url) as session:
        text = "".join(usage.csv_chunks(usage.stream_logs(session, account_id, usage.LogFilter())))

    (row,) = csv.DictReader(io.StringIO(text))
    assert row["detail"] == "'" + title
    assert row["operation"] == "content_generation"


def test_the_csv_streams_in_batches(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(usage, "CSV_BATCH_ROWS", 2)
    with transaction(db_url) as session:
        account_id = make_account(session, "growth").id
    for hours in range(5):
        run_job(db_url, monkeypatch, account_id, "clustering", at=NOW - timedelta(hours=hours))

    with transaction(db_url) as session:
        chunks = list(usage.csv_chunks(usage.stream_logs(session, account_id, usage.LogFilter())))

    assert [chunk.count("\r\n") for chunk in chunks] == [3, 2, 1]


# --- platform totals -------------------------------------------------------------------------


def test_platform_daily_sums_every_account_per_utc_day(db_url: str, spending: Spending) -> None:
    span = usage.window(UTC, NOW, days="7", start=None, end=None)
    with transaction(db_url) as session:
        # Jobs are dated by the database clock; move each to its usage log's day.
        session.execute(
            update(Job).values(
                created_at=select(CreditUsageLog.created_at)
                .where(CreditUsageLog.job_id == Job.id)
                .scalar_subquery()
            )
        )
        session.execute(update(Job).where(Job.id == spending.jobs[0]).values(status="failed"))
    with transaction(db_url) as session:
        body = usage.platform_daily(session, span)
        logs = session.execute(
            select(CreditUsageLog.created_at, CreditUsageLog.credits, Job.status)
            .join(Job, Job.id == CreditUsageLog.job_id)
            .where(CreditUsageLog.created_at >= span.start)
        ).all()

    credits: dict[str, int] = {}
    jobs: dict[str, dict[str, int]] = {}
    for at, spent, status in logs:
        day = as_utc(at).date().isoformat()
        credits[day] = credits.get(day, 0) + spent
        jobs.setdefault(day, {})[status] = jobs.get(day, {}).get(status, 0) + 1
    assert {d["date"]: d["credits"] for d in body["data"] if d["credits"]} == credits
    assert {
        d["date"]: {k: n for k, n in d["jobs"].items() if n} for d in body["data"] if d["credits"]
    } == jobs
    assert len(body["data"]) == 7
    assert body["totals"]["credits"] == sum(credits.values())
    # both sites' jobs of June 12 and June 14, and the other account's
    assert sum(d["usage_rows"] for d in body["data"]) == len(logs) == 11


def _on_a_deleted_site(db_url: str, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """An account whose settled clustering job ran on a site deleted since."""
    from billing.sites import delete_site

    with transaction(db_url) as session:
        account = make_account(session, "growth", credits=100_000)
        site = Site(account_id=account.id, name="old blog")
        session.add(site)
        session.flush()
        account_id, site_id = account.id, site.id
    run_job(db_url, monkeypatch, account_id, "clustering", site_id=site_id, at=NOW - timedelta(1))
    with transaction(db_url) as session:
        delete_site(session, account_id, site_id, NOW)
    return account_id, site_id


def test_a_deleted_sites_usage_and_artifacts_can_still_be_filtered(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deleting a site keeps its usage and artifacts for history (insights name it): the
    filters that read them take it too, as GET /v1/sites/{id} does."""
    from billing.artifacts import KINDS, list_artifacts

    account_id, site_id = _on_a_deleted_site(db_url, monkeypatch)
    with transaction(db_url) as session:
        account = session.get(Account, account_id)
        where = usage.log_filter(session, account, site_id=site_id)
        logs = usage.list_logs(session, account_id, where, cursor=None, limit=50).rows
        clusters = list_artifacts(session, account_id, KINDS["clusters"], site_id=site_id).rows

    assert len(logs) == 1
    assert len(clusters) == 2
    assert {log.site_id for log in logs} == {site_id}


def test_a_to_time_is_the_exclusive_end_and_a_to_date_includes_the_day(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with transaction(db_url) as session:
        account_id = make_account(session, "growth", credits=100_000).id
    at = datetime(2026, 6, 14, 12, 0, tzinfo=UTC)
    run_job(db_url, monkeypatch, account_id, "clustering", at=at)

    def count(start: str, end: str) -> int:
        with transaction(db_url) as session:
            account = session.get(Account, account_id)
            where = usage.log_filter(session, account, start=start, end=end)
            return len(usage.list_logs(session, account_id, where, cursor=None, limit=50).rows)

    assert count("2026-06-14T00:00:00", "2026-06-14T12:00:00") == 0
    assert count("2026-06-14T00:00:00", "2026-06-14T12:00:01") == 1
    assert count("2026-06-14", "2026-06-14") == 1
