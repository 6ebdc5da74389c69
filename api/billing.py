"""Billing: the account's payment history, cancelling a pending purchase, and the Stripe
webhook that confirms (or fails) purchases paid through Checkout."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, request

from api.db import after_commit, db
from api.payments import expire_checkout, verified_event
from api.security import current_account, require_key, require_role
from api.validation import query_int
from billing import purchases
from models import utcnow

bp = Blueprint("billing", __name__, url_prefix="/v1/billing")


@bp.get("/payments")
@require_key
@require_role("manage_billing")
def payments() -> dict[str, Any]:
    """Billing history: purchases, bank transfers and plan payments, newest first."""
    page = purchases.list_purchases(
        db(),
        current_account().id,
        status=request.args.get("status"),
        cursor=request.args.get("cursor"),
        limit=query_int("limit", 20),
    )
    return page.body(purchases.purchase_view)


@bp.get("/payments/<purchase_id>")
@require_key
@require_role("manage_billing")
def payment(purchase_id: str) -> dict[str, Any]:
    purchase = purchases.get_purchase(db(), purchase_id, current_account().id)
    return {"purchase": purchases.purchase_view(purchase)}


@bp.post("/payments/<purchase_id>/cancel")
@require_key
@require_role("manage_billing")
def cancel(purchase_id: str) -> dict[str, Any]:
    """Give up a pending purchase: it fails, and its checkout can no longer be paid."""
    session = db()
    purchases.get_purchase(session, purchase_id, current_account().id)
    purchase = purchases.cancel(session, purchase_id, utcnow())
    after_commit(lambda: expire_checkout(purchase.stripe_session_id))
    return {"purchase": purchases.purchase_view(purchase)}


@bp.post("/stripe/webhook")
def stripe_webhook() -> dict[str, Any]:
    """Stripe's events, verified with the endpoint secret; a bad signature is a 400."""
    event = verified_event(request.get_data(), request.headers.get("Stripe-Signature"))
    outcome = purchases.apply_stripe_event(db(), event, utcnow())
    return {"received": True, "outcome": outcome}
