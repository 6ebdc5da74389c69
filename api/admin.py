"""Admin endpoints (X-Admin-Token): credit adjustments, status and plan changes, bank
transfers, and confirming (or failing) purchases paid outside Stripe."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from flask import Blueprint, request
from pydantic import BaseModel, ConfigDict, Field

from api.db import after_commit, commit_now, db
from api.jobs import IDEMPOTENCY_KEY, REPLAYED_HEADER
from api.payments import close_checkout_first, expire_checkout, retrieve_checkout
from api.schemas import (
    AccountDetailOut,
    AccountOut,
    AccountStatus,
    AdminJobOut,
    BankTransferOut,
    ConfirmOut,
    JobStatus,
    ListOf,
    OperationName,
    Page,
    PlanOut,
    PurchaseAnswer,
    PurchaseOut,
    PurchaseStatus,
    SyncOut,
    UnbilledPage,
    UnbilledReason,
    responds,
)
from api.security import require_admin
from api.validation import PageQuery, json_body, query_params, request_headers
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
from billing.amounts import Payment
from billing.errors import Conflict
from billing.text import NOT_BLANK, TRIMMED
from models import utcnow

if TYPE_CHECKING:
    from api.openapi import DocumentBuilder

# Said by an admin, kept on the record: trimmed, never blank (a reference " BANK-7" is
# "BANK-7", so a payment typed with a stray blank is still the same payment).
Reference = Annotated[str, Field(max_length=200), TRIMMED, NOT_BLANK]
Reason = Annotated[str, Field(max_length=500), TRIMMED, NOT_BLANK]
bp = Blueprint("admin", __name__, url_prefix="/v1/admin")


class AdjustBody(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"examples": [{"amount": 500, "reason": "goodwill"}]},
    )

    amount: int = Field(
        ge=-10_000_000,
        le=10_000_000,
        description="Not 0; negative takes back.",
        json_schema_extra={"not": {"const": 0}},
    )
    reason: Reason


class AccountPatch(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"examples": [{"status": "active", "plan": "growth"}]},
    )

    status: AccountStatus | None = None
    plan: str | None = Field(default=None, max_length=50, description="A plan's slug.")


class AccountsQuery(PageQuery):
    email: str | None = Field(
        default=None, max_length=320, description="A member's email, or its start (any case)."
    )
    status: AccountStatus | None = None
    plan: str | None = Field(default=None, max_length=50, description="A plan's slug.")


@bp.get("/accounts")
@responds(Page[AccountOut])
@require_admin
@query_params(AccountsQuery)
def find_accounts(query: AccountsQuery) -> dict[str, Any]:
    """Find accounts by a member's email (prefix, any case), status or plan slug."""
    page = backoffice.find_accounts(
        db(),
        email=query.email,
        status=query.status,
        plan=query.plan,
        cursor=query.cursor,
        limit=query.limit,
    )
    return page.body(lambda account: accounts.account_view(db(), account))


@bp.get("/accounts/<account_id>")
@responds(AccountDetailOut)
@require_admin
def account_detail(account_id: str) -> dict[str, Any]:
    """An account whole: members, keys by prefix, recent jobs and transactions."""
    return backoffice.account_detail(db(), account_id)


class AdminJobsQuery(PageQuery):
    status: JobStatus | None = None
    account_id: str | None = Field(default=None, max_length=40)
    operation: OperationName | None = None


@bp.get("/jobs")
@responds(Page[AdminJobOut])
@require_admin
@query_params(AdminJobsQuery)
def find_jobs(query: AdminJobsQuery) -> dict[str, Any]:
    """Jobs across accounts, newest first: `?status=running` finds stuck work."""
    page = backoffice.find_jobs(
        db(),
        status=query.status,
        account_id=query.account_id,
        operation=query.operation,
        cursor=query.cursor,
        limit=query.limit,
    )
    return page.body(backoffice.admin_job_view)


ADJUSTMENT_KEY = {
    **IDEMPOTENCY_KEY,
    "description": "Posts the adjustment once: a retry with the same key, amount and reason "
    "answers without posting again (`Idempotent-Replayed: true`); another amount or reason "
    "is a 409.",
}


@bp.post("/accounts/<account_id>/credits")
@responds(AccountOut, errors=(402, 409), headers={"Idempotent-Replayed": REPLAYED_HEADER})
@request_headers(ADJUSTMENT_KEY)
@require_admin
@json_body(AdjustBody)
def adjust_credits(account_id: str, body: AdjustBody) -> tuple[dict[str, Any], int, dict[str, str]]:
    """Grant (or take back) credits: an `adjustment` transaction."""
    session = db()
    account = accounts.get_account(session, account_id)
    posted = credits.adjust(
        session, account.id, body.amount, body.reason, request.headers.get("Idempotency-Key")
    )
    session.refresh(account)
    headers = {} if posted else {"Idempotent-Replayed": "true"}
    return accounts.account_view(session, account), 200, headers


@bp.patch("/accounts/<account_id>")
@responds(AccountOut)
@require_admin
@json_body(AccountPatch)
def update_account(account_id: str, body: AccountPatch) -> dict[str, Any]:
    """Status or plan; activating a paid plan grants this period's credits once."""
    session = db()
    account = subscriptions.admin_change(session, account_id, body.status, body.plan, utcnow())
    return accounts.account_view(session, account)


class BankTransferBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    payment_reference: Reference
    amount: Payment
    payer_name: Reference
    proof_url: str | None = Field(default=None, max_length=2000)
    period_months: int = Field(default=1, ge=1, le=24)
    # Accept an amount other than the plan's price x months; kept in the transaction.
    override_reason: Reason | None = None


@bp.post("/accounts/<account_id>/bank-transfer")
@responds(BankTransferOut, errors=(409,))
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
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [{"payment_reference": "BANK-2026-0042", "method": "bank_transfer"}]
        },
    )

    payment_reference: Reference
    method: Literal["manual", "bank_transfer"] = "manual"


class FailBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    reason: Reference


class PurchasesQuery(PageQuery):
    status: PurchaseStatus | None = None
    account_id: str | None = Field(default=None, max_length=40)


@bp.get("/purchases")
@responds(Page[PurchaseOut])
@require_admin
@query_params(PurchasesQuery)
def list_purchases(query: PurchasesQuery) -> dict[str, Any]:
    """Every account's purchases, newest first (`status=pending`: what awaits payment)."""
    page = purchases.list_purchases(
        db(), query.account_id, status=query.status, cursor=query.cursor, limit=query.limit
    )
    return page.body(purchases.purchase_view)


@bp.post("/purchases/<purchase_id>/confirm")
@responds(ConfirmOut, errors=(409,))
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
@responds(PurchaseAnswer, errors=(409, 502))
@require_admin
@json_body(FailBody)
def fail_purchase(purchase_id: str, body: FailBody) -> dict[str, Any]:
    """The payment will not come (declined, bounced): the purchase fails, nothing granted."""
    close_checkout_first(purchases.get_purchase(db(), purchase_id))
    purchase = purchases.cancel(db(), purchase_id, utcnow(), reason=body.reason)
    return {"purchase": purchases.purchase_view(purchase)}


@bp.post("/purchases/<purchase_id>/sync")
@responds(SyncOut, errors=(409, 502))
@require_admin
def sync_purchase(purchase_id: str) -> dict[str, Any]:
    """Ask Stripe how the purchase's checkout ended and apply it (a missed webhook).

    Committed before the call: SQLite's writer lock is not held while Stripe answers."""
    session = db()
    purchase = purchases.get_purchase(session, purchase_id)
    if not purchase.stripe_session_id:
        raise Conflict("This purchase has no Stripe checkout to ask about.")
    commit_now()
    checkout = retrieve_checkout(purchase.stripe_session_id)
    outcome = purchases.apply_stripe_event(session, purchases.event_for(checkout), utcnow())
    purchase = purchases.get_purchase(session, purchase_id)
    return {"purchase": purchases.purchase_view(purchase), "outcome": outcome}


class PlanPatch(plans.PlanFields):
    """Any of a plan's fields; only those sent change (the plan must stay valid)."""

    @classmethod
    def openapi_schema(cls, builder: DocumentBuilder) -> dict[str, Any]:
        schema = builder.plain(plans.PlanFields)
        schema.pop("required", None)
        for field in schema["properties"].values():
            field.pop("default", None)
        return {**schema, "title": cls.__name__, "description": cls.__doc__}


@bp.post("/plans")
@responds(PlanOut, 201, errors=(409,))
@require_admin
@json_body(dict, documented_as=plans.NewPlan)
def create_plan(body: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """A new plan (billing/plans.py checks its fields)."""
    return accounts.plan_view(plans.create_plan(db(), body)), 201


@bp.patch("/plans/<slug>")
@responds(PlanOut)
@require_admin
@json_body(dict, documented_as=PlanPatch)
def update_plan(slug: str, body: dict[str, Any]) -> dict[str, Any]:
    """Change a plan's fields. Retiring it (`is_active: false`) fails its purchases
    still waiting for a payment (`plan_retired`) and closes their Stripe checkouts."""
    session = db()
    plan = plans.update_plan(session, slug, body)
    for checkout in purchases.withdraw_retired_plan(session, plan, utcnow()):
        after_commit(lambda checkout=checkout: expire_checkout(checkout))
    return accounts.plan_view(plan)


@bp.get("/plans")
@responds(ListOf[PlanOut])
@require_admin
def list_plans() -> dict[str, Any]:
    """Every plan, internal and inactive ones too."""
    return {"data": [accounts.plan_view(p) for p in plans.list_all(db())]}


class UnbilledQuery(PageQuery):
    reason: UnbilledReason | None = None


@bp.get("/unbilled-usage")
@responds(UnbilledPage)
@require_admin
@query_params(UnbilledQuery)
def list_unbilled_usage(query: UnbilledQuery) -> dict[str, Any]:
    """Provider usage nobody was charged for (billing/unbilled.py), newest first, with
    the totals."""
    session = db()
    page = unbilled.list_unbilled(
        session, cursor=query.cursor, limit=query.limit, reason=query.reason
    )
    return {**page.body(unbilled.unbilled_view), "totals": unbilled.totals(session)}
