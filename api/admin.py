"""Admin endpoints (X-Admin-Token): credit adjustments, status and plan changes, bank
transfers, and confirming (or failing) purchases paid outside Stripe."""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Literal

from flask import Blueprint, request
from pydantic import BaseModel, ConfigDict, Field

from api.db import after_commit, db
from api.payments import expire_checkout, retrieve_checkout
from api.security import require_admin
from api.validation import json_body, query_int
from billing import (
    accounts,
    backoffice,
    credits,
    ledger,
    plans,
    purchases,
    subscriptions,
    unbilled,
)
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


@bp.get("/accounts")
@require_admin
def find_accounts() -> dict[str, Any]:
    """Find accounts by a member's email (prefix, any case), status or plan slug."""
    page = backoffice.find_accounts(
        db(),
        email=request.args.get("email"),
        status=request.args.get("status"),
        plan=request.args.get("plan"),
        cursor=request.args.get("cursor"),
        limit=query_int("limit", 20),
    )
    return page.body(lambda account: accounts.account_view(db(), account))


@bp.get("/accounts/<account_id>")
@require_admin
def account_detail(account_id: str) -> dict[str, Any]:
    return backoffice.account_detail(db(), account_id)


@bp.get("/jobs")
@require_admin
def find_jobs() -> dict[str, Any]:
    """Jobs across accounts, newest first: `?status=running` finds stuck work."""
    page = backoffice.find_jobs(
        db(),
        status=request.args.get("status"),
        account_id=request.args.get("account_id"),
        operation=request.args.get("operation"),
        cursor=request.args.get("cursor"),
        limit=query_int("limit", 20),
    )
    return page.body(backoffice.admin_job_view)


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
    """Status or plan; activating a paid plan grants this period's credits once."""
    session = db()
    account = subscriptions.admin_change(session, account_id, body.status, body.plan, utcnow())
    return accounts.account_view(session, account)


class BankTransferBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    payment_reference: str = Field(min_length=1, max_length=200)
    amount: Decimal = Field(gt=0, max_digits=12, decimal_places=2, strict=False)
    payer_name: str = Field(min_length=1, max_length=200)
    proof_url: str | None = Field(default=None, max_length=2000)
    period_months: int = Field(default=1, ge=1, le=24)
    # Accept an amount other than the plan's price x months; kept in the transaction.
    override_reason: str | None = Field(default=None, min_length=1, max_length=500)


@bp.post("/accounts/<account_id>/bank-transfer")
@require_admin
@json_body(BankTransferBody)
def confirm_bank_transfer(account_id: str, body: BankTransferBody) -> dict[str, Any]:
    """Confirm a bank transfer: the plan's credits for each month paid (tenancy plan, phase 5).

    The amount must be the plan's price x months unless `override_reason` says why not."""
    session = db()
    txn = credits.confirm_bank_transfer(
        session, account_id, credits.BankTransfer(**body.model_dump()), utcnow()
    )
    account = accounts.get_account(session, account_id)
    return {**accounts.account_view(session, account), "transaction": ledger.transaction_view(txn)}


class ConfirmBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    payment_reference: str = Field(min_length=1, max_length=200)
    method: Literal["manual", "bank_transfer"] = "manual"


class FailBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    reason: str = Field(min_length=1, max_length=200)


@bp.get("/purchases")
@require_admin
def list_purchases() -> dict[str, Any]:
    """Every account's purchases, newest first (`status=pending`: what awaits payment)."""
    page = purchases.list_purchases(
        db(),
        request.args.get("account_id"),
        status=request.args.get("status"),
        cursor=request.args.get("cursor"),
        limit=query_int("limit", 20),
    )
    return page.body(purchases.purchase_view)


@bp.post("/purchases/<purchase_id>/confirm")
@require_admin
@json_body(ConfirmBody)
def confirm_purchase(purchase_id: str, body: ConfirmBody) -> dict[str, Any]:
    """The payment arrived (manual or bank): grant the purchase, once."""
    confirmation = purchases.confirm(
        db(), purchase_id, body.method, body.payment_reference, utcnow()
    )
    purchase = confirmation.purchase
    if confirmation.granted:
        after_commit(lambda: expire_checkout(purchase.stripe_session_id))
    return {"purchase": purchases.purchase_view(purchase), "granted": confirmation.granted}


@bp.post("/purchases/<purchase_id>/fail")
@require_admin
@json_body(FailBody)
def fail_purchase(purchase_id: str, body: FailBody) -> dict[str, Any]:
    """The payment will not come (declined, bounced): the purchase fails, nothing granted."""
    purchase = purchases.cancel(db(), purchase_id, utcnow(), reason=body.reason)
    after_commit(lambda: expire_checkout(purchase.stripe_session_id))
    return {"purchase": purchases.purchase_view(purchase)}


@bp.post("/purchases/<purchase_id>/sync")
@require_admin
def sync_purchase(purchase_id: str) -> dict[str, Any]:
    """Ask Stripe how the purchase's checkout ended and apply it (a missed webhook)."""
    session = db()
    purchase = purchases.get_purchase(session, purchase_id)
    if not purchase.stripe_session_id:
        raise InvalidInput("This purchase has no Stripe checkout to ask about.")
    checkout = retrieve_checkout(purchase.stripe_session_id)
    outcome = purchases.apply_stripe_event(session, purchases.event_for(checkout), utcnow())
    purchase = purchases.get_purchase(session, purchase_id)
    return {"purchase": purchases.purchase_view(purchase), "outcome": outcome}


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
