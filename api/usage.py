"""Usage analytics: summary, insights and logs (JSON pages or streamed CSV) for the
caller's account, the same for any account with the admin token, and platform totals."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC
from typing import Any

from flask import Blueprint, Response, request

from api.db import db
from api.errors import ApiError
from api.security import current_account, require_admin, require_key
from api.validation import query_int
from billing import usage
from billing.accounts import get_account
from models import Account, utcnow
from models.db import session_factory

bp = Blueprint("usage", __name__, url_prefix="/v1")


@bp.get("/usage/summary")
@require_key
def summary() -> dict[str, Any]:
    """The four limits, the balance and this period's spend."""
    return usage.summary(db(), current_account(), utcnow())


@bp.get("/usage/insights")
@require_key
def insights() -> dict[str, Any]:
    """Credits per operation, site, model, image tier and source, and a timeline."""
    return _insights(current_account())


@bp.get("/usage/logs")
@require_key
def logs() -> Any:
    """One row per billed AI operation; `format=csv` (or Accept: text/csv) streams all."""
    return _logs(current_account())


@bp.get("/admin/accounts/<account_id>/usage/summary")
@require_admin
def admin_summary(account_id: str) -> dict[str, Any]:
    """An account's usage summary, for operators."""
    return usage.summary(db(), get_account(db(), account_id), utcnow())


@bp.get("/admin/accounts/<account_id>/usage/insights")
@require_admin
def admin_insights(account_id: str) -> dict[str, Any]:
    """An account's credit insights, for operators."""
    return _insights(get_account(db(), account_id))


@bp.get("/admin/accounts/<account_id>/usage/logs")
@require_admin
def admin_logs(account_id: str) -> Any:
    """An account's usage logs (JSON or CSV), for operators."""
    return _logs(get_account(db(), account_id))


@bp.get("/admin/usage/daily")
@require_admin
def platform_daily() -> dict[str, Any]:
    """Per UTC day, all accounts: credits, USD cost and jobs by status."""
    span = usage.window(UTC, utcnow(), **_range())
    return usage.platform_daily(db(), span)


def _range() -> dict[str, str | None]:
    return {
        "days": request.args.get("days"),
        "start": request.args.get("from"),
        "end": request.args.get("to"),
    }


def _insights(account: Account) -> dict[str, Any]:
    span = usage.window(usage.account_zone(account), utcnow(), **_range())
    return usage.insights(db(), account, span)


def _logs(account: Account) -> Any:
    where = usage.log_filter(
        db(),
        account,
        operation=request.args.get("operation"),
        site_id=request.args.get("site_id"),
        model=request.args.get("model"),
        job_id=request.args.get("job_id"),
        start=request.args.get("from"),
        end=request.args.get("to"),
    )
    if _wants_csv():
        return _csv(account.id, where)
    page = usage.list_logs(
        db(),
        account.id,
        where,
        cursor=request.args.get("cursor"),
        limit=query_int("limit", usage.LOG_PAGE_SIZE),
    )
    return page.body(usage.log_view)


def _wants_csv() -> bool:
    chosen = request.args.get("format")
    if chosen not in (None, "json", "csv"):
        raise ApiError(
            422, "invalid_request", "format must be json or csv.", fields={"format": "json|csv"}
        )
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
