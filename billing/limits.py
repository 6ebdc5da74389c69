"""The four hard limits of the seeds: sites, users, keywords, Ahrefs queries a month.

Everything else is paid for in credits. Checks lock the account row first, so two
concurrent additions cannot both squeeze under the limit (PostgreSQL `FOR UPDATE`;
SQLite's `BEGIN IMMEDIATE` already serialises writers).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from billing.errors import LimitReached, SubscriptionRequired
from models import Account, Keyword, Plan, Site, User, as_utc, utcnow


@dataclass(frozen=True)
class Limit:
    name: str
    title: str
    noun: str
    plan_field: str
    advice: str
    display_name: str


LIMITS = {
    limit.name: limit
    for limit in (
        Limit("sites", "Site Limit Reached", "sites", "max_sites", "Remove a site", "Sites"),
        Limit(
            "users",
            "Team User Limit Reached",
            "team users",
            "max_users",
            "Remove a user",
            "Team Users",
        ),
        Limit(
            "keywords",
            "Keyword Limit Reached",
            "keywords",
            "max_keywords",
            "Delete unused keywords",
            "Keywords",
        ),
        Limit(
            "ahrefs_queries",
            "Keyword Research Query Limit Reached",
            "keyword research queries this month",
            "max_ahrefs_queries",
            "Wait for the reset",
            "Keyword Research Queries",
        ),
    )
}
_COUNTED = {"sites": Site, "users": User, "keywords": Keyword}
# Which rows take a seat: deleted sites stay for history only.
_LIVE = {"sites": Site.deleted_at.is_(None)}


def _count(session: Session, name: str, account_id: str) -> int:
    model: Any = _COUNTED[name]
    query = select(func.count()).select_from(model).where(model.account_id == account_id)
    if name in _LIVE:
        query = query.where(_LIVE[name])
    return session.scalar(query) or 0


def plan_limit(plan: Plan | None, name: str) -> int | None:
    """None means unlimited; an account without a plan gets nothing."""
    if plan is None:
        return 0
    value: int | None = getattr(plan, LIMITS[name].plan_field)
    return value


def used(session: Session, account: Account, name: str) -> int:
    if name == "ahrefs_queries":
        return account.usage_ahrefs_queries
    return _count(session, name, account.id)


def limits_report(
    session: Session, account: Account, *, named: bool = False
) -> dict[str, dict[str, Any]]:
    """`used` and `limit` of the four limits (None: unlimited); `named` adds the
    `display_name` the usage page shows ("Keyword Research Queries")."""
    return {
        name: {
            "used": used(session, account, name),
            "limit": plan_limit(account.plan, name),
            **({"display_name": spec.display_name} if named else {}),
        }
        for name, spec in LIMITS.items()
    }


class Locked(NamedTuple):
    """The account's plans as the lock found them (a read before the lock may be stale)."""

    plan_id: int | None
    scheduled_plan_id: int | None


def lock_account(session: Session, account_id: str) -> Locked:
    """Take the account's row lock; the plans it returns are the ones committed now."""
    row = session.execute(
        select(Account.plan_id, Account.scheduled_plan_id)
        .where(Account.id == account_id)
        .with_for_update()
    ).one_or_none()
    return Locked(None, None) if row is None else Locked(row.plan_id, row.scheduled_plan_id)


def ensure_room(session: Session, account: Account, name: str, adding: int = 1) -> None:
    """Raise the friendly LimitReached unless `adding` more items still fit, in the plan
    and in a downgrade waiting for the period end (which was accepted because it fit).

    The plans are the ones read under the lock, not the caller's (read before it): a
    downgrade committed in between counts."""
    locked = lock_account(session, account.id)
    plan = session.get(Plan, locked.plan_id) if locked.plan_id is not None else None
    scheduled = (
        session.get(Plan, locked.scheduled_plan_id)
        if locked.scheduled_plan_id is not None
        else None
    )
    limit, extra = plan_limit(plan, name), ""
    later = plan_limit(scheduled, name) if scheduled is not None else None
    if scheduled is not None and later is not None and (limit is None or later < limit):
        limit = later
        extra = f" (The {scheduled.name} plan you move to at the period end.)"
    if limit is None:
        return
    current = used(session, account, name)
    if current + adding > limit:
        raise _reached(plan, name, current, limit, adding, extra)


def excess(session: Session, account: Account, plan: Plan) -> dict[str, dict[str, int]]:
    """What the account holds beyond `plan`'s sites, users and keywords limits."""
    over = {}
    for name in _COUNTED:
        limit = plan_limit(plan, name)
        current = used(session, account, name)
        if limit is not None and current > limit:
            over[name] = {"used": current, "limit": limit, "remove": current - limit}
    return over


def _reached(
    plan: Plan | None, name: str, current: int, limit: int, adding: int, extra: str = ""
) -> LimitReached:
    spec = LIMITS[name]
    plan_name = plan.name if plan else "your"
    wanted = f" This request would add {adding:,}." if adding > 1 else ""
    return LimitReached(
        f"{spec.title}: you have {current:,} of {limit:,} {spec.noun} on the {plan_name} plan."
        f"{wanted} {spec.advice} or upgrade your plan.{extra}",
        limit_name=name,
        current=current,
        limit=limit,
        requested=adding,
    )


@dataclass(frozen=True)
class AhrefsQuery:
    """A counted query: the month's usage with it, and the period it was counted in."""

    used: int
    period_start: datetime | None


def require_paid_plan(account: Account, what: str) -> None:
    """Refuse what the plan's payment buys beyond credits (Ahrefs queries cost us money,
    top-ups are priced by the plan) while that payment is awaited: a paid sign-up never
    paid, or prepaid time that ran out. The account keeps what it has and may pay."""
    if account.status != "pending_payment":
        return
    plan_name = account.plan.name if account.plan else "your"
    raise SubscriptionRequired(
        f"The {plan_name} plan is awaiting payment: {what} is available once it is paid. "
        "Finish the payment (GET /v1/billing/payments lists it) or choose another plan.",
        plan=account.plan.slug if account.plan else None,
        reason="payment_pending",
    )


def consume_ahrefs_query(session: Session, account: Account) -> AhrefsQuery:
    """Count one live keyword-research query against the month, or refuse."""
    require_paid_plan(account, "keyword research")
    limit = plan_limit(account.plan, "ahrefs_queries")
    if limit == 0:
        plan_name = account.plan.name if account.plan else "your"
        raise LimitReached(
            f"Keyword research with Ahrefs is not included in the {plan_name} plan. "
            "Upgrade to Starter or above for live keyword research.",
            limit_name="ahrefs_queries",
            current=account.usage_ahrefs_queries,
            limit=0,
            requested=1,
        )
    query = update(Account).where(Account.id == account.id)
    if limit is not None:
        query = query.where(Account.usage_ahrefs_queries < limit)
    row = session.execute(
        query.values(usage_ahrefs_queries=Account.usage_ahrefs_queries + 1)
        .returning(Account.usage_ahrefs_queries, Account.period_start)
        .execution_options(synchronize_session=False)
    ).one_or_none()
    if row is None:
        extra = _ahrefs_reset_note(account.period_end, utcnow())
        raise _reached(account.plan, "ahrefs_queries", limit or 0, limit or 0, 1, extra)
    return AhrefsQuery(int(row[0]), row[1])


def _ahrefs_reset_note(period_end: datetime | None, now: datetime) -> str:
    """When the count resets. Between a period's end and the periodic rollover that resets
    it, the end date is already past: promise the rollover, not a day gone by."""
    if period_end is None:
        return ""
    if as_utc(period_end) > now:
        return f" Your queries reset on {as_utc(period_end).date()}."
    return (
        f" Your month ended on {as_utc(period_end).date()}; "
        "your queries reset at the next rollover (hourly)."
    )


def refund_ahrefs_query(session: Session, account_id: str, counted: AhrefsQuery) -> bool:
    """The query never reached Ahrefs (it failed): give it back, to the period it was
    counted in only. If the rollover reset the count meanwhile, that period is gone and
    the new one owes nothing: False, nothing changes."""
    refunded = session.execute(
        update(Account)
        .where(
            Account.id == account_id,
            Account.usage_ahrefs_queries > 0,
            Account.period_start.is_not_distinct_from(counted.period_start),
        )
        .values(usage_ahrefs_queries=Account.usage_ahrefs_queries - 1)
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    return bool(refunded)
