"""The Stripe stand-in: the Checkout Session calls the official `stripe` SDK makes
(create, retrieve, expire, under `/stripe/v1`), and a control endpoint that plays the
customer: it pays (or abandons) a session and POSTs the signed event Stripe would send.

Events are signed like Stripe's (`Stripe-Signature: t=<unix>,v1=<HMAC-SHA256 of
"t.payload">`) with the webhook secret the caller names, so the receiving side verifies
them with the SDK's own `stripe.Webhook.construct_event`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import parse_qsl

from flask import Blueprint, Response, current_app, request

from simulator.errors import RequestError, json_object, json_response, raw_body
from simulator.faults import counted

stripe = Blueprint("stripe", __name__)

SESSION_TTL_SECONDS = 24 * 3600
EVENT_TYPES = (
    "checkout.session.completed",
    "checkout.session.expired",
    "checkout.session.async_payment_succeeded",
    "checkout.session.async_payment_failed",
)
_KEY_PART = re.compile(r"\[([^\]]*)\]")


class CheckoutSessions:
    """The sessions one simulator holds (thread-safe), and the idempotency keys seen."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sessions: dict[str, dict[str, Any]] = {}
        self._by_key: dict[str, str] = {}

    def create(self, params: dict[str, Any], base_url: str, key: str | None) -> dict[str, Any]:
        with self._lock:
            if key and key in self._by_key:
                return dict(self._sessions[self._by_key[key]])
            session = _new_session(params, base_url)
            self._sessions[session["id"]] = session
            if key:
                self._by_key[key] = session["id"]
            return dict(session)

    def get(self, session_id: str) -> dict[str, Any]:
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                raise RequestError(
                    404, f"No such checkout.session: '{session_id}'", "resource_missing"
                )
            return dict(session)

    def move(self, session_id: str, event_type: str, delayed: bool = False) -> dict[str, Any]:
        """Apply what the customer did (pay, abandon) and return the session after it.

        As Stripe: a delayed method (bank debit) completes `unpaid`, and only such a
        session later has its async payment succeed (-> paid) or fail (stays unpaid)."""
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                raise RequestError(
                    404, f"No such checkout.session: '{session_id}'", "resource_missing"
                )
            if event_type == "checkout.session.expired":
                if session["status"] != "open":
                    raise RequestError(
                        400,
                        "Only Checkout Sessions with a status in [open] can be expired.",
                        "checkout_session_not_open",
                    )
                session.update(status="expired", url=None)
            elif event_type == "checkout.session.completed":
                if session["status"] != "open":
                    raise RequestError(400, "This Checkout Session is no longer open.")
                session.update(
                    status="complete",
                    payment_status="unpaid" if delayed else "paid",
                    payment_intent="pi_" + secrets.token_hex(12),
                    url=None,
                )
            else:  # the async outcome of a delayed payment
                if (session["status"], session["payment_status"]) != ("complete", "unpaid"):
                    raise RequestError(
                        400, "Only a completed Checkout Session awaiting payment settles later."
                    )
                if event_type == "checkout.session.async_payment_succeeded":
                    session.update(payment_status="paid")
            return dict(session)


def _new_session(params: dict[str, Any], base_url: str) -> dict[str, Any]:
    if params.get("mode") not in ("payment", "subscription", "setup"):
        raise RequestError(400, "Missing required param: mode.", "parameter_missing")
    items = params.get("line_items")
    if not isinstance(items, list) or not items:
        raise RequestError(400, "Missing required param: line_items.", "parameter_missing")
    total, currency = 0, None
    for item in items:
        price = item.get("price_data") if isinstance(item, dict) else None
        if not isinstance(price, dict):
            raise RequestError(400, "Each line item needs price_data.", "parameter_missing")
        try:
            total += int(price["unit_amount"]) * int(item.get("quantity", 1))
        except (KeyError, ValueError):
            raise RequestError(
                400, "Invalid integer: unit_amount.", "parameter_invalid_integer"
            ) from None
        currency = str(price.get("currency", "")).lower()
    if not currency:
        raise RequestError(400, "Missing required param: currency.", "parameter_missing")
    if total < 50:
        raise RequestError(400, "The Checkout Session's total amount must be at least $0.50.")
    session_id = "cs_test_" + secrets.token_hex(16)
    now = int(time.time())
    return {
        "id": session_id,
        "object": "checkout.session",
        "mode": params["mode"],
        "status": "open",
        "payment_status": "unpaid",
        "amount_total": total,
        "currency": currency,
        "client_reference_id": params.get("client_reference_id"),
        "metadata": params.get("metadata") or {},
        "payment_intent": None,
        "success_url": params.get("success_url"),
        "cancel_url": params.get("cancel_url"),
        "created": now,
        "expires_at": now + SESSION_TTL_SECONDS,
        "livemode": False,
        "url": f"{base_url}/stripe/checkout/{session_id}",
    }


def form_params() -> dict[str, Any]:
    """Stripe's form encoding (`line_items[0][price_data][currency]=usd`) as nested data."""
    params: dict[str, Any] = {}
    for key, value in parse_qsl(raw_body().decode("utf-8"), keep_blank_values=True):
        head, _, rest = key.partition("[")
        path = [head, *_KEY_PART.findall("[" + rest)] if rest else [head]
        node: Any = params
        for part, following in zip(path, [*path[1:], None], strict=True):
            if following is None:
                node[part] = value
                break
            child: Any = [] if following.isdigit() else {}
            if isinstance(node, list):
                index = int(part)
                while len(node) <= index:
                    node.append(child)
                node = node[index]
            else:
                node = node.setdefault(part, child)
    return params


def sessions() -> CheckoutSessions:
    found: CheckoutSessions = current_app.extensions["simulator.stripe"]
    return found


@stripe.post("/stripe/v1/checkout/sessions")
@counted("stripe")
def create_session() -> Response:
    base_url: str = current_app.config["SIM_URL"]
    session = sessions().create(form_params(), base_url, request.headers.get("Idempotency-Key"))
    return json_response(200, session)


@stripe.get("/stripe/v1/checkout/sessions/<session_id>")
def retrieve_session(session_id: str) -> Response:
    return json_response(200, sessions().get(session_id))


@stripe.post("/stripe/v1/checkout/sessions/<session_id>/expire")
def expire_session(session_id: str) -> Response:
    return json_response(200, sessions().move(session_id, "checkout.session.expired"))


@stripe.get("/stripe/checkout/<session_id>")
def checkout_page(session_id: str) -> Response:
    """Where a session's `url` leads: the session, and how to play the customer."""
    session = sessions().get(session_id)
    how = (
        f"POST /_sim/stripe/checkout/sessions/{session_id}/events "
        '{"type": "checkout.session.completed", "deliver_to": "<your webhook URL>"}'
    )
    return json_response(200, {"session": session, "pay": how})


@stripe.post("/_sim/stripe/checkout/sessions/<session_id>/events")
def customer_event(session_id: str) -> Response:
    """Play the customer: `{"type", "webhook_secret"?, "deliver_to"?, "timestamp"?,
    "delayed"?}` (`delayed`: a completed checkout paid by a delayed method, still unpaid).

    The secret defaults to `STRIPE_WEBHOOK_SECRET` (what `make run` gives both sides).
    Moves the session as that event says, signs the event with `webhook_secret` (at
    `timestamp`, default now: tests pass an old one to play a replay) and, with
    `deliver_to`, POSTs it there. Answers the event, its exact payload and signature.
    """
    body = json_object()
    event_type = body.get("type", "checkout.session.completed")
    secret = body.get("webhook_secret") or os.environ.get("STRIPE_WEBHOOK_SECRET")
    if event_type not in EVENT_TYPES or not isinstance(secret, str) or not secret:
        raise RequestError(
            400, f"'type' must be one of {EVENT_TYPES}; 'webhook_secret' is required."
        )
    timestamp = body.get("timestamp", int(time.time()))
    if isinstance(timestamp, bool) or not isinstance(timestamp, int):
        raise RequestError(400, "'timestamp' must be Unix seconds.")
    session = sessions().move(session_id, event_type, delayed=body.get("delayed") is True)
    event = {
        "id": "evt_" + secrets.token_hex(12),
        "object": "event",
        "type": event_type,
        "created": timestamp,
        "livemode": False,
        "data": {"object": session},
    }
    payload = json.dumps(event)
    signature = sign(payload, secret, timestamp)
    answer: dict[str, Any] = {"event": event, "payload": payload, "signature": signature}
    deliver_to = body.get("deliver_to")
    if isinstance(deliver_to, str) and deliver_to:
        answer["delivered_status"] = _deliver(deliver_to, payload, signature)
    return json_response(200, answer)


def sign(payload: str, secret: str, timestamp: int) -> str:
    """Stripe's signature header for `payload`, keyed with the endpoint's secret."""
    mac = hmac.new(secret.encode(), f"{timestamp}.{payload}".encode(), hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def _deliver(url: str, payload: str, signature: str) -> int:
    request_ = urllib.request.Request(  # noqa: S310 - a URL the test or developer names
        url,
        data=payload.encode(),
        headers={"Content-Type": "application/json", "Stripe-Signature": signature},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request_, timeout=10) as response:  # noqa: S310
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
