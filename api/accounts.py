"""The caller's own account: status, plan, credits and the four limits; its settings, the
owner's plan changes and spending budgets."""

from __future__ import annotations

import re
from typing import Annotated, Any
from zoneinfo import available_timezones

from flask import Blueprint
from pydantic import BaseModel, ConfigDict, Field

from api.db import after_commit, db
from api.payments import expire_checkout, with_checkout
from api.schemas import AccountOut, BudgetOut, OperationName, PlanChangeOut, responds
from api.security import current_account, require_key, require_key_to_choose_plan, require_role
from api.validation import json_body
from billing import accounts, budgets, subscriptions, usage
from billing.budgets import MAX_BUDGET
from models import utcnow

bp = Blueprint("accounts", __name__, url_prefix="/v1")


@bp.get("/account")
@responds(AccountOut)
@require_key_to_choose_plan
def get_account() -> dict[str, Any]:
    """Your account: status, plan, credits and the four limits (also on a retired plan)."""
    return accounts.account_view(db(), current_account())


ZONES = sorted(available_timezones())


def _constant(zone: str) -> str:
    """A name for the zone in generated clients: `Etc/GMT+1` and `Etc/GMT-1` differ."""
    return re.sub(r"\W", "_", zone.replace("+", "_PLUS_").replace("-", "_MINUS_")).upper()


TimeZone = Annotated[
    str,
    Field(
        max_length=64,
        json_schema_extra={"enum": ZONES, "x-enum-varnames": [_constant(z) for z in ZONES]},
    ),
]


class AccountSettings(BaseModel):
    model_config = ConfigDict(
        extra="forbid", strict=True, json_schema_extra={"examples": [{"timezone": "Europe/Paris"}]}
    )

    timezone: TimeZone | None = Field(
        default=None, description="IANA name; usage days are bucketed in it (null: UTC)."
    )


@bp.patch("/account")
@responds(AccountOut)
@require_key
@require_role("manage_account")
@json_body(AccountSettings)
def update_account(body: AccountSettings) -> dict[str, Any]:
    """The account's settings: `timezone` (IANA name, null for UTC) buckets usage."""
    account = current_account()
    if "timezone" in body.model_fields_set:
        usage.set_timezone(db(), account, body.timezone)
    return accounts.account_view(db(), account)


class PlanChangeBody(BaseModel):
    model_config = ConfigDict(
        extra="forbid", strict=True, json_schema_extra={"examples": [{"plan": "growth"}]}
    )

    plan: str = Field(min_length=1, max_length=50, json_schema_extra={"x-choices": "public_plans"})


@bp.post("/account/plan")
@responds(PlanChangeOut, errors=(409, 502))
@require_key_to_choose_plan
@require_role("manage_plan")
@json_body(PlanChangeBody)
def change_plan(body: PlanChangeBody) -> dict[str, Any]:
    """Upgrade (pay the purchase it returns), or downgrade at the period end. An account
    on a retired plan leaves it: a free plan at once, a paid one when paid."""
    session = db()
    account = current_account()
    change = subscriptions.request_change(session, account, body.plan, utcnow())
    for checkout in change.closed_checkouts:
        after_commit(lambda checkout=checkout: expire_checkout(checkout))
    answer = subscriptions.plan_change_view(change)
    if change.purchase is not None:
        answer["purchase"] = with_checkout(change.purchase)
    return {"change": answer, "account": accounts.account_view(session, account)}


class BudgetBody(BaseModel):
    """Credits per usage period; null removes a budget."""

    model_config = ConfigDict(extra="forbid", strict=True)

    monthly_credits: int | None = Field(ge=1, le=MAX_BUDGET)
    per_operation: dict[OperationName, Annotated[int, Field(ge=1, le=MAX_BUDGET)]] | None = None


@bp.get("/account/budget")
@responds(BudgetOut)
@require_key
def get_budget() -> dict[str, Any]:
    """Your spending budgets and what this period used of them."""
    return budgets.budget_view(db(), current_account())


@bp.put("/account/budget")
@responds(BudgetOut)
@require_key
@require_role("manage_budget")
@json_body(BudgetBody)
def set_budget(body: BudgetBody) -> dict[str, Any]:
    """Cap what a period may spend; submissions past it get 402 `budget_exceeded`."""
    session = db()
    account = budgets.set_budget(
        session, current_account(), body.monthly_credits, body.per_operation
    )
    return budgets.budget_view(session, account)
