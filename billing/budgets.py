"""Spending budgets: an owner's cap on the credits spent in a usage period, for the whole
account and optionally per operation (the seeds' AISettings `cost_limits`).

"Spent" is what this period charged plus what open holds may still charge, so a
submission whose hold would cross a budget is refused before anything is held. The check
runs only for accounts with a budget: it locks the account row first (PostgreSQL
`SELECT ... FOR UPDATE`; SQLite's `BEGIN IMMEDIATE` already serialises writers), so
concurrent submissions are counted one after another and cannot overshoot together.
Accounts without a budget pay nothing for it: the budget columns ride on the account
row the request has already loaded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from billing.errors import BudgetExceeded, InvalidInput
from billing.limits import lock_account
from billing.operations import OPERATIONS
from billing.usage import current_period
from models import (
    FINAL_RUN_STATUSES,
    Account,
    AutomationRun,
    CreditReservation,
    CreditTransaction,
    Job,
    utcnow,
)

MAX_BUDGET = 1_000_000_000


@dataclass(frozen=True)
class Budget:
    name: str  # "monthly" or the operation
    credits: int


def set_budget(
    session: Session,
    account: Account,
    monthly_credits: int | None,
    per_operation: dict[str, int] | None,
) -> Account:
    """Replace the account's budgets (None clears one)."""
    for name, value in (per_operation or {}).items():
        if name not in OPERATIONS:
            raise InvalidInput(
                f"Unknown operation {name!r} in per_operation.",
                fields={"per_operation": f"keys among {', '.join(OPERATIONS)}"},
            )
        if not 1 <= value <= MAX_BUDGET:
            raise InvalidInput(
                f"per_operation.{name} must be 1 to {MAX_BUDGET:,} credits.",
                fields={f"per_operation.{name}": f"1-{MAX_BUDGET}"},
            )
    account.budget_monthly_credits = monthly_credits
    account.budget_per_operation = dict(per_operation) if per_operation else None
    session.flush()
    return account


def budgets_for(account: Account, operation: str) -> list[Budget]:
    """The budgets a job of `operation` counts against (none: no check at all)."""
    found = []
    if account.budget_monthly_credits is not None:
        found.append(Budget("monthly", account.budget_monthly_credits))
    per_operation = (account.budget_per_operation or {}).get(operation)
    if per_operation is not None:
        found.append(Budget(operation, int(per_operation)))
    return found


def check(session: Session, account: Account, holds: Mapping[str, int]) -> None:
    """Refuse (402 `budget_exceeded`) holds (credits per operation: one job's, or an
    automation run's worst case per stage) that would take this period's charged + held
    credits past a budget. Call it before the ledger's reserve, in the same transaction."""
    if not any(budgets_for(account, operation) for operation in holds):
        return
    _lock_with_budgets(session, account)
    over = exceeded(session, account, holds)
    if over is not None:
        budget, used, required = over
        scope = "monthly budget" if budget.name == "monthly" else f"{budget.name} budget"
        raise BudgetExceeded(
            f"This needs up to {required:,} credits, but {used:,} of your {scope} of "
            f"{budget.credits:,} credits are already spent or held this period. Raise the "
            "budget (PUT /v1/account/budget) or wait for the next period.",
            budget=budget.name,
            limit=budget.credits,
            used=used,
            required=required,
        )


def _lock_with_budgets(session: Session, account: Account) -> None:
    """Lock the account, then count against its budgets as committed now (the caller's
    read may predate an owner's change)."""
    lock_account(session, account.id)
    session.refresh(account, ["budget_monthly_credits", "budget_per_operation"])


def allow_late_charge(session: Session, account_id: str, operation: str, credits: int) -> bool:
    """Whether a late answer's charge (its hold expired, so its share went back to the
    budgets and others may have used it) still fits the budgets; no budget: True."""
    account = session.get(Account, account_id)
    if account is None or not budgets_for(account, operation):
        return True
    _lock_with_budgets(session, account)
    return exceeded(session, account, {operation: credits}) is None


def exceeded(
    session: Session, account: Account, holds: Mapping[str, int]
) -> tuple[Budget, int, int] | None:
    """The first budget `holds` would take past, with what it has used and what they
    need; None when every budget has room. Reads only (`check` locks first)."""
    period = current_period(account, utcnow())
    needs: dict[Budget, int] = {}
    for operation, hold in holds.items():
        for budget in budgets_for(account, operation):
            needs[budget] = needs.get(budget, 0) + hold
    for budget, required in needs.items():
        used = spent(session, account, None if budget.name == "monthly" else budget.name, period)
        if used + required > budget.credits:
            return budget, used, required
    return None


def spent(
    session: Session, account: Account, operation: str | None, period: tuple[datetime, datetime]
) -> int:
    """Credits charged in `period` (`usage.current_period`: the one holding now, even
    before the rollover stores it) plus credits held now (of `operation`), counting what
    open automation runs still hold for jobs they have not made yet."""
    start, end = period
    charged: Select[Any] = select(func.coalesce(func.sum(-CreditTransaction.amount), 0)).where(
        CreditTransaction.account_id == account.id,
        CreditTransaction.type == "deduction",
        CreditTransaction.created_at >= start,
        CreditTransaction.created_at < end,
    )
    held: Select[Any] = select(func.coalesce(func.sum(CreditReservation.amount), 0)).where(
        CreditReservation.account_id == account.id, CreditReservation.status == "held"
    )
    if operation is not None:
        charged = charged.join(Job, Job.id == CreditTransaction.job_id).where(
            Job.operation == operation
        )
        held = held.join(Job, Job.id == CreditReservation.job_id).where(Job.operation == operation)
    return (
        int(session.scalar(charged) or 0)
        + int(session.scalar(held) or 0)
        + _pooled(session, account, operation)
    )


def _pooled(session: Session, account: Account, operation: str | None) -> int:
    """Open runs' pools: all of it for the monthly budget; for one operation, its stage's
    worst case not yet carved into jobs (a run's pool is not kept per stage), at most the
    pool itself."""
    runs = session.scalars(
        select(AutomationRun).where(
            AutomationRun.account_id == account.id,
            AutomationRun.held_credits > 0,
            AutomationRun.status.not_in(FINAL_RUN_STATUSES),
        )
    ).all()
    if operation is None:
        return sum(run.held_credits for run in runs)
    total = 0
    for run in runs:
        stage = run.plan.get(operation)
        if stage is None:
            continue
        carved = session.scalar(
            select(func.coalesce(func.sum(CreditReservation.amount), 0))
            .join(Job, Job.id == CreditReservation.job_id)
            .where(CreditReservation.automation_id == run.id, Job.operation == operation)
        )
        planned = int(stage["jobs"]) * int(stage["hold"])
        total += min(max(planned - int(carved or 0), 0), run.held_credits)
    return total


def budget_view(session: Session, account: Account) -> dict[str, Any]:
    """The budgets, and the period their `used` figures count (the one holding now)."""
    per_operation = account.budget_per_operation or {}
    period = current_period(account, utcnow())
    return {
        "monthly_credits": account.budget_monthly_credits,
        "per_operation": per_operation,
        "period_start": period[0].isoformat(),
        "period_end": period[1].isoformat(),
        "used": {
            "monthly": spent(session, account, None, period),
            "per_operation": {
                name: spent(session, account, name, period) for name in per_operation
            },
        },
    }
