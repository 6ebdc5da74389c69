"""Usage analytics: summary, insights and logs (JSON pages or streamed CSV) for the
caller's account, the same for any account with the admin token, and platform totals."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC
from typing import Annotated, Any, Literal

from flask import Blueprint, Response, request
from pydantic import BeforeValidator, Field

from api.db import db
from api.schemas import (
    DailyOut,
    InsightsOut,
    OperationName,
    Page,
    SummaryOut,
    UsageLogOut,
    responds,
)
from api.security import current_account, require_admin, require_key
from api.validation import PageQuery, Query, QueryInt, integral, query_params
from billing import usage
from billing.accounts import get_account
from billing.paging import MAX_PAGE_SIZE
from models import Account, utcnow
from models.db import session_factory

bp = Blueprint("usage", __name__, url_prefix="/v1")


DATE_OR_TIME = (
    "A date (`2026-11-01`, a whole local day) or an ISO 8601 time (without an offset: "
    "local), in the years 2 to 9998. `from`..`to` spans at most 366 days; `to` needs "
    "`from`; not with `days`."
)
DateOrTime = Annotated[
    str,
    Field(
        min_length=1,
        max_length=40,
        json_schema_extra={"anyOf": [{"format": "date"}, {"format": "date-time"}]},
    ),
]
CSV = {"text/csv": {"type": "string", "description": "A header row, one line per row."}}


# A date ends the range after that whole day; a time is the range's (exclusive) end.
TO_BOUND = " A date is included whole; a time is the exclusive end."


class RangeQuery(Query):
    """The last `days` days, or `from`..`to` (at most 366 days; not both ways at once)."""

    days: Annotated[Literal[7, 30, 90], BeforeValidator(integral)] | None = Field(
        default=None, description="The last N days, today included (default 30)."
    )
    from_: DateOrTime | None = Field(default=None, alias="from", description=DATE_OR_TIME)
    to: DateOrTime | None = Field(default=None, description=DATE_OR_TIME + TO_BOUND)

    def window(self, zone: Any) -> usage.Window:
        days = str(self.days) if self.days is not None else None
        return usage.window(zone, utcnow(), days=days, start=self.from_, end=self.to)


class LogsQuery(PageQuery):
    limit: QueryInt = Field(
        default=usage.LOG_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE, description="Rows per page."
    )
    operation: OperationName | None = None
    site_id: str | None = Field(default=None, max_length=40)
    model: str | None = Field(
        default=None, max_length=100, json_schema_extra={"x-choices": "models"}
    )
    job_id: str | None = Field(default=None, max_length=40)
    from_: DateOrTime | None = Field(default=None, alias="from", description=DATE_OR_TIME)
    to: DateOrTime | None = Field(default=None, description=DATE_OR_TIME + TO_BOUND)
    format: Literal["json", "csv"] | None = Field(
        default=None,
        description="`csv`: every matching row as CSV (ignores limit and cursor). Default: "
        "JSON, or CSV when `Accept` prefers `text/csv`.",
    )


@bp.get("/usage/summary")
@responds(SummaryOut)
@require_key
def summary() -> dict[str, Any]:
    """The four limits, the balance and this period's spend."""
    return usage.summary(db(), current_account(), utcnow())


@bp.get("/usage/insights")
@responds(InsightsOut)
@require_key
@query_params(RangeQuery)
def insights(query: RangeQuery) -> dict[str, Any]:
    """Credits per operation, site, model, image tier and source, and a timeline."""
    return _insights(current_account(), query)


@bp.get("/usage/logs")
@responds(Page[UsageLogOut], media_types=CSV)
@require_key
@query_params(LogsQuery)
def logs(query: LogsQuery) -> Any:
    """One row per billed AI operation; `format=csv` (or Accept: text/csv) streams all."""
    return _logs(current_account(), query)


@bp.get("/admin/accounts/<account_id>/usage/summary")
@responds(SummaryOut)
@require_admin
def admin_summary(account_id: str) -> dict[str, Any]:
    """An account's usage summary, for operators."""
    return usage.summary(db(), get_account(db(), account_id), utcnow())


@bp.get("/admin/accounts/<account_id>/usage/insights")
@responds(InsightsOut)
@require_admin
@query_params(RangeQuery)
def admin_insights(account_id: str, query: RangeQuery) -> dict[str, Any]:
    """An account's credit insights, for operators."""
    return _insights(get_account(db(), account_id), query)


@bp.get("/admin/accounts/<account_id>/usage/logs")
@responds(Page[UsageLogOut], media_types=CSV)
@require_admin
@query_params(LogsQuery)
def admin_logs(account_id: str, query: LogsQuery) -> Any:
    """An account's usage logs (JSON or CSV), for operators."""
    return _logs(get_account(db(), account_id), query)


@bp.get("/admin/usage/daily")
@responds(DailyOut)
@require_admin
@query_params(RangeQuery)
def platform_daily(query: RangeQuery) -> dict[str, Any]:
    """Per UTC day, all accounts: credits, USD cost and jobs by status."""
    return usage.platform_daily(db(), query.window(UTC))


def _insights(account: Account, query: RangeQuery) -> dict[str, Any]:
    return usage.insights(db(), account, query.window(usage.account_zone(account)))


def _logs(account: Account, query: LogsQuery) -> Any:
    where = usage.log_filter(
        db(),
        account,
        operation=query.operation,
        site_id=query.site_id,
        model=query.model,
        job_id=query.job_id,
        start=query.from_,
        end=query.to,
    )
    if _wants_csv(query.format):
        return _csv(account.id, where)
    page = usage.list_logs(db(), account.id, where, cursor=query.cursor, limit=query.limit)
    return page.body(usage.log_view)


def _wants_csv(chosen: str | None) -> bool:
    if chosen is not None:
        return chosen == "csv"
    return request.accept_mimetypes.best_match(["application/json", "text/csv"]) == "text/csv"


def _csv(account_id: str, where: usage.LogFilter) -> Response:
    """Every matching row, streamed after the request's own transaction has ended: the
    generator reads in a session of its own through a server-side cursor."""

    def rows() -> Iterator[str]:
        with session_factory(read_only=True)() as session:
            yield from usage.csv_chunks(usage.stream_logs(session, account_id, where))

    filename = f"usage-{account_id}-{utcnow():%Y%m%d}.csv"
    return Response(
        rows(),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
