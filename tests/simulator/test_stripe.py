"""The Stripe stand-in, driven by the official `stripe` SDK: Checkout Sessions created
(idempotently), retrieved and expired, and customer events signed the way Stripe signs."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import stripe

from simulator.server import SimulatedProviderServer
from tests.simulator.test_server import serving

SECRET = "whsec_simulated"
PARAMS = {
    "mode": "payment",
    "client_reference_id": "pur_1",
    "metadata": {"purchase_id": "pur_1"},
    "line_items": [
        {
            "quantity": 2,
            "price_data": {
                "currency": "usd",
                "unit_amount": 250,
                "product_data": {"name": "1,000 credits"},
            },
        }
    ],
    "success_url": "https://example.com/ok",
    "cancel_url": "https://example.com/cancel",
}


@pytest.fixture
def server() -> Iterator[SimulatedProviderServer]:
    with serving() as srv:
        yield srv


@pytest.fixture
def client(server: SimulatedProviderServer) -> stripe.StripeClient:
    return stripe.StripeClient(
        "sk_test_x", base_addresses={"api": server.url + "/stripe"}, max_network_retries=0
    )


def test_a_session_is_created_once_per_idempotency_key(client: stripe.StripeClient) -> None:
    sessions = client.v1.checkout.sessions
    first = sessions.create(PARAMS, {"idempotency_key": "k1"})  # type: ignore[arg-type]
    again = sessions.create(PARAMS, {"idempotency_key": "k1"})  # type: ignore[arg-type]
    other = sessions.create(PARAMS, {"idempotency_key": "k2"})  # type: ignore[arg-type]

    assert first.id == again.id != other.id
    assert (first.amount_total, first.currency, first.status) == (500, "usd", "open")
    assert (first.client_reference_id, first.metadata["purchase_id"]) == ("pur_1", "pur_1")
    assert sessions.retrieve(first.id).payment_status == "unpaid"


def test_paying_signs_a_completed_event_the_sdk_verifies(
    client: stripe.StripeClient, server: SimulatedProviderServer
) -> None:
    created = client.v1.checkout.sessions.create(PARAMS)  # type: ignore[arg-type]
    answer = httpx.post(
        f"{server.url}/_sim/stripe/checkout/sessions/{created.id}/events",
        json={"webhook_secret": SECRET},
    ).json()

    event = stripe.Webhook.construct_event(answer["payload"], answer["signature"], SECRET)
    assert event.type == "checkout.session.completed"
    assert event.data.object.payment_status == "paid"
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(answer["payload"], answer["signature"], "whsec_other")
    paid = client.v1.checkout.sessions.retrieve(created.id)
    assert (paid.status, paid.payment_intent.startswith("pi_")) == ("complete", True)


def test_only_open_sessions_expire_and_unknown_ones_are_404(client: stripe.StripeClient) -> None:
    sessions = client.v1.checkout.sessions
    created = sessions.create(PARAMS)  # type: ignore[arg-type]

    assert sessions.expire(created.id).status == "expired"
    with pytest.raises(stripe.InvalidRequestError, match=r"status in \[open\]"):
        sessions.expire(created.id)
    with pytest.raises(stripe.InvalidRequestError, match=r"No such checkout\.session"):
        sessions.retrieve("cs_test_missing")
    with pytest.raises(stripe.InvalidRequestError, match="line_items"):
        sessions.create({"mode": "payment", "success_url": "https://example.com"})
