"""Admin endpoints (X-Admin-Token): credit adjustments, status and plan changes."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from flask import Blueprint, request
from pydantic import BaseModel, ConfigDict, Field

from api.db import db
from api.security import require_admin
from api.validation import json_body, query_int
from billing import accounts, credits, ledger, plans, unbilled
from billing.errors import InvalidInput
from models import utcnow

bp = Blueprint("admin", __name__, url_prefix="/v1/admin")


class AdjustBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    amount: int = Field(ge=-10_000_000, le=10_000_000)
    reason: str = Field(min_length=1, max_length=500)


class AccountPatch(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    status: str | None = None
    plan: str | None = None


@bp.post("/accounts/<account_id>/credits")
@require_admin
@json_body(AdjustBody)
def adjust_credits(account_id: str, body: AdjustBody) -> dict[str, Any]:
    session = db()
    account = accounts.get_account(session, account_id)
    if body.amount == 0:
        raise InvalidInput("amount must not be 0.", fields={"amount": "non-zero integer"})
    ledger.grant(session, account.id, body.amount, "adjustment", body.reason)
    session.refresh(account)
    return accounts.account_view(session, account)


@bp.patch("/accounts/<account_id>")
@require_admin
@json_body(AccountPatch)
def update_account(account_id: str, body: AccountPatch) -> dict[str, Any]:
    session = db()
    account = accounts.admin_update(session, account_id, body.status, body.plan)
    return accounts.account_view(session, account)


class BankTransferBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    payment_reference: str = Field(min_length=1, max_length=200)
    amount: Decimal = Field(gt=0, max_digits=12, decimal_places=2, strict=False)
    payer_name: str = Field(min_length=1, max_length=200)
    proof_url: str | None = Field(default=None, max_length=2000)
    period_months: int = Field(default=1, ge=1, le=24)


@bp.post("/accounts/<account_id>/bank-transfer")
@require_admin
@json_body(BankTransferBody)
def confirm_bank_transfer(account_id: str, body: BankTransferBody) -> dict[str, Any]:
    """Confirm a bank transfer: the plan's credits for each month paid (tenancy plan, phase 5)."""
    session = db()
    txn = credits.confirm_bank_transfer(
        session, account_id, credits.BankTransfer(**body.model_dump()), utcnow()
    )
    account = accounts.get_account(session, account_id)
    return {**accounts.account_view(session, account), "transaction": ledger.transaction_view(txn)}


@bp.post("/plans")
@require_admin
@json_body(dict)
def create_plan(body: dict[str, Any]) -> tuple[dict[str, Any], int]:
    return accounts.plan_view(plans.create_plan(db(), body)), 201


@bp.patch("/plans/<slug>")
@require_admin
@json_body(dict)
def update_plan(slug: str, body: dict[str, Any]) -> dict[str, Any]:
    return accounts.plan_view(plans.update_plan(db(), slug, body))


@bp.get("/plans")
@require_admin
def list_plans() -> dict[str, Any]:
    return {"data": [accounts.plan_view(p) for p in plans.list_all(db())]}


@bp.get("/unbilled-usage")
@require_admin
def list_unbilled_usage() -> dict[str, Any]:
    """Provider usage nobody was charged for (billing/unbilled.py), newest first, with
    the totals."""
    session = db()
    page = unbilled.list_unbilled(
        session,
        cursor=request.args.get("cursor"),
        limit=query_int("limit", 20),
        reason=request.args.get("reason"),
    )
    return {**page.body(unbilled.unbilled_view), "totals": unbilled.totals(session)}
