"""Provider usage nobody was charged for, recorded so it is never silently dropped.

Three ways to get here, each rare: a second run of a job that another run (or the
reconciler) had already ended; a late answer for a job whose hold expired, when the
account could no longer cover it; our own failure after the provider answered. Admins
list and count them (`GET /v1/admin/unbilled-usage`).
"""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from billing.errors import InvalidInput
from billing.paging import Page, decode_int_cursor, encode_cursor, page_of, page_size
from billing.pricing import Usage, actual_charge
from models import UNBILLED_REASONS, AIModelConfig, UnbilledUsage, as_utc

log = logging.getLogger(__name__)


def record(
    session: Session,
    *,
    account_id: str,
    job_id: str,
    operation: str,
    model_name: str,
    usage: Usage,
    hold: int,
    reason: str,
) -> UnbilledUsage:
    """One row: what the usage would have cost the account, and what it cost us."""
    model = session.get(AIModelConfig, model_name)
    if model is None:
        raise LookupError(f"model {model_name!r} is no longer configured")
    charge = actual_charge(model, usage, hold)
    row = UnbilledUsage(
        account_id=account_id,
        job_id=job_id,
        operation=operation,
        model=model_name,
        tokens_in=usage.tokens_in,
        tokens_out=usage.tokens_out,
        images=usage.images,
        credits=charge.credits,
        cost_usd=charge.cost_usd,
        reason=reason,
    )
    session.add(row)
    session.flush()
    log.warning(
        "unbilled usage on job %s (%s): %s credits, $%s",
        job_id,
        reason,
        charge.credits,
        charge.cost_usd,
        extra={"job_id": job_id, "reason": reason, "credits": charge.credits},
    )
    return row


def list_unbilled(
    session: Session, *, cursor: str | None, limit: int, reason: str | None = None
) -> Page[UnbilledUsage]:
    """Newest first."""
    limit = page_size(limit)
    query = select(UnbilledUsage)
    if reason is not None and reason not in UNBILLED_REASONS:
        raise InvalidInput(
            f"Unknown reason {reason!r}.",
            fields={"reason": f"one of {', '.join(UNBILLED_REASONS)}"},
        )
    if reason is not None:
        query = query.where(UnbilledUsage.reason == reason)
    if cursor:
        query = query.where(UnbilledUsage.id < decode_int_cursor(cursor))
    rows = session.scalars(query.order_by(UnbilledUsage.id.desc()).limit(limit + 1)).all()
    return page_of(rows, limit, lambda row: encode_cursor(str(row.id)))


def totals(session: Session) -> dict[str, Any]:
    """Count, credits and USD cost of all unbilled usage, and the count per reason."""
    count, credits, cost = session.execute(
        select(
            func.count(UnbilledUsage.id),
            func.coalesce(func.sum(UnbilledUsage.credits), 0),
            func.coalesce(func.sum(UnbilledUsage.cost_usd), 0),
        )
    ).one()
    by_reason = dict(
        session.execute(
            select(UnbilledUsage.reason, func.count()).group_by(UnbilledUsage.reason)
        ).all()
    )
    return {
        "count": int(count),
        "credits": int(credits),
        "cost_usd": str(Decimal(cost).quantize(Decimal("0.000001"))),
        "by_reason": {str(reason): int(n) for reason, n in by_reason.items()},
    }


def unbilled_view(row: UnbilledUsage) -> dict[str, Any]:
    return {
        "id": row.id,
        "account_id": row.account_id,
        "job_id": row.job_id,
        "operation": row.operation,
        "model": row.model,
        "tokens_input": row.tokens_in,
        "tokens_output": row.tokens_out,
        "images": row.images,
        "credits": row.credits,
        "cost_usd": str(row.cost_usd),
        "reason": row.reason,
        "created_at": as_utc(row.created_at).isoformat(),
    }
