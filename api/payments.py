"""Stripe, through the official SDK: a Checkout Session for each purchase, and the
signature check on the events Stripe sends back.

Without `STRIPE_API_KEY` nothing here talks to Stripe: purchases wait for an admin's
confirmation. With it, `STRIPE_API_BASE` picks the API (the simulated provider's
stand-in by default, so development and tests run the same SDK calls offline).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import stripe

from api.db import commit_now, db
from api.errors import ApiError
from billing import purchases
from models import Purchase, utcnow
from settings import get_settings

log = logging.getLogger(__name__)


def _client() -> stripe.StripeClient:
    settings = get_settings()
    return stripe.StripeClient(
        settings.stripe_api_key,
        base_addresses={"api": settings.stripe_api_base},
        max_network_retries=2,
    )


def with_checkout(purchase: Purchase, *, must_succeed: bool = True) -> dict[str, Any]:
    """The purchase's view, with a Stripe Checkout URL to pay it when Stripe is set up.

    The purchase is committed before Stripe is called (no database lock is held across
    the network). If Stripe cannot be reached the purchase is marked failed and the
    caller gets a 502 to retry; with `must_succeed=False` (a registration, whose API key
    must reach the caller) it stays pending without a URL, to pay another way.
    """
    if not get_settings().stripe_api_key:
        return purchases.purchase_view(purchase)
    session = db()
    purchase_id = purchase.id
    params = _checkout_params(purchase)
    commit_now()
    try:
        checkout = _client().v1.checkout.sessions.create(
            params,  # type: ignore[arg-type]
            {"idempotency_key": f"checkout-{purchase_id}"},
        )
    except stripe.StripeError as exc:
        log.warning("stripe checkout for purchase %s failed: %s", purchase_id, exc)
        if not must_succeed:
            return {**purchases.purchase_view(purchase), "checkout_error": str(exc.user_message)}
        purchases.fail(session, purchase_id, "payment_provider_error", utcnow())
        commit_now()
        raise ApiError(
            502,
            "payment_provider_unavailable",
            "The payment provider could not start a checkout; nothing was charged. Retry.",
            purchase_id=purchase_id,
        ) from None
    purchases.attach_checkout(session, purchase_id, checkout.id, checkout.url)
    return purchases.purchase_view(purchases.get_purchase(session, purchase_id))


def _checkout_params(purchase: Purchase) -> dict[str, Any]:
    settings = get_settings()
    if purchase.kind == "credits":
        name = f"{purchase.credits:,} credits"
    else:
        plan_name = purchase.plan.name if purchase.plan else "Plan"
        name = f"{plan_name} plan, {purchase.period_months} month(s)"
    return {
        "mode": "payment",
        "client_reference_id": purchase.id,
        "metadata": {"purchase_id": purchase.id, "account_id": purchase.account_id},
        "line_items": [
            {
                "quantity": 1,
                "price_data": {
                    "currency": purchase.currency,
                    "unit_amount": purchases.minor_units(purchase.amount),
                    "product_data": {"name": name},
                },
            }
        ],
        "success_url": settings.stripe_success_url,
        "cancel_url": settings.stripe_cancel_url,
    }


def close_checkout_first(purchase: Purchase) -> None:
    """Before a pending purchase is given up: close its checkout at Stripe, so no payment
    can complete after we failed it. A checkout Stripe already completed (its event not
    here yet) is applied now, committed, and the cancel refused with a 409; Stripe not
    answering is a 502 and changes nothing."""
    checkout_id = purchase.stripe_session_id
    if purchase.status != "pending" or not checkout_id or not get_settings().stripe_api_key:
        return
    session, purchase_id = db(), purchase.id
    commit_now()
    try:
        _client().v1.checkout.sessions.expire(checkout_id)
        return
    except stripe.InvalidRequestError:
        pass  # no longer open: completed, or expired already
    except stripe.StripeError:
        raise ApiError(
            502,
            "payment_provider_unavailable",
            "The payment provider did not answer; the purchase is unchanged. Retry.",
            purchase_id=purchase_id,
        ) from None
    checkout = retrieve_checkout(checkout_id)
    if checkout.get("status") != "complete":
        return
    outcome = purchases.apply_stripe_event(session, purchases.event_for(checkout), utcnow())
    commit_now()
    raise ApiError(
        409,
        "purchase_not_pending",
        "The checkout was already completed at Stripe: the payment is applied, not cancelled.",
        purchase_id=purchase_id,
        outcome=outcome,
    )


def expire_checkout(session_id: str | None) -> None:
    """Close a purchase's checkout so it cannot be paid after we settled it otherwise.

    Best effort, after commit: a session that cannot be expired is logged; paying it
    would find the purchase no longer pending and grant nothing.
    """
    if not session_id or not get_settings().stripe_api_key:
        return
    try:
        _client().v1.checkout.sessions.expire(session_id)
    except stripe.StripeError as exc:
        log.warning("could not expire stripe checkout %s: %s", session_id, exc)


def retrieve_checkout(session_id: str) -> dict[str, Any]:
    """The Checkout Session as Stripe has it now (to reconcile a missed event)."""
    try:
        checkout = _client().v1.checkout.sessions.retrieve(session_id)
    except stripe.StripeError as exc:
        raise ApiError(
            502, "payment_provider_unavailable", f"Stripe did not answer: {exc.user_message}"
        ) from None
    data: dict[str, Any] = json.loads(str(checkout))
    return data


def verified_event(payload: bytes, signature: str | None) -> dict[str, Any]:
    """The event Stripe signed, or a 400: a forged, altered or stale (replayed) request."""
    settings = get_settings()
    if not settings.stripe_webhook_secret:
        raise ApiError(400, "stripe_not_configured", "STRIPE_WEBHOOK_SECRET is not set.")
    try:
        stripe.Webhook.construct_event(
            payload,
            signature or "",
            settings.stripe_webhook_secret,
            tolerance=settings.stripe_webhook_tolerance,
        )
    except stripe.SignatureVerificationError:
        raise ApiError(
            400, "invalid_signature", "The Stripe-Signature header does not verify."
        ) from None
    except ValueError:
        raise ApiError(400, "invalid_payload", "The event is not valid JSON.") from None
    event: dict[str, Any] = json.loads(payload)
    return event
