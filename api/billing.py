"""Billing: the account's payment history, cancelling a pending purchase, and the Stripe
webhook that confirms (or fails) purchases paid through Checkout."""

from __future__ import annotations

from typing import Any, Literal

from flask import Blueprint, request

from api.db import db
from api.payments import close_checkout_first, verified_event
from api.schemas import Page, PurchaseAnswer, PurchaseOut, StripeEventOut, responds
from api.security import current_account, require_key, require_role
from api.validation import PageQuery, query_params
from billing import purchases
from models import utcnow
from models.purchase import PURCHASE_STATUSES

bp = Blueprint("billing", __name__, url_prefix="/v1/billing")


class PaymentsQuery(PageQuery):
    status: Literal[PURCHASE_STATUSES] | None = None  # type: ignore[valid-type]


@bp.get("/payments")
@responds(Page[PurchaseOut])
@require_key
@require_role("manage_billing")
@query_params(PaymentsQuery)
def payments(query: PaymentsQuery) -> dict[str, Any]:
    """Billing history: purchases, bank transfers and plan payments, newest first."""
    page = purchases.list_purchases(
        db(), current_account().id, status=query.status, cursor=query.cursor, limit=query.limit
    )
    return page.body(purchases.purchase_view)


@bp.get("/payments/<purchase_id>")
@responds(PurchaseAnswer)
@require_key
@require_role("manage_billing")
def payment(purchase_id: str) -> dict[str, Any]:
    purchase = purchases.get_purchase(db(), purchase_id, current_account().id)
    return {"purchase": purchases.purchase_view(purchase)}


@bp.post("/payments/<purchase_id>/cancel")
@responds(PurchaseAnswer, errors=(409, 502))
@require_key
@require_role("manage_billing")
def cancel(purchase_id: str) -> dict[str, Any]:
    """Give up a pending purchase: it fails, and its checkout can no longer be paid."""
    session = db()
    close_checkout_first(purchases.get_purchase(session, purchase_id, current_account().id))
    purchase = purchases.cancel(session, purchase_id, utcnow())
    return {"purchase": purchases.purchase_view(purchase)}


@bp.post("/stripe/webhook")
@responds(StripeEventOut, errors=(400,))
def stripe_webhook() -> dict[str, Any]:
    """Stripe's events, verified with the endpoint secret; a bad signature is a 400."""
    event = verified_event(request.get_data(), request.headers.get("Stripe-Signature"))
    outcome = purchases.apply_stripe_event(db(), event, utcnow())
    return {"received": True, "outcome": outcome}
