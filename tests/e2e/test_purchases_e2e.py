"""End to end: a paid sign-up on a live API server, paid at the simulator's Stripe
Checkout, which POSTs the signed event to our webhook over HTTP; then a job runs on the
real worker against the credits the payment granted. The `e2e` fixture audits after."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support import auth, serving, wait_for_job

pytestmark = pytest.mark.e2e

SECRET = "whsec_e2e_endpoint_secret"


@pytest.fixture
def live_api(app: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("STRIPE_API_KEY", "sk_test_simulated")
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", SECRET)
    with serving(app) as url:
        yield url


def test_paid_signup_paid_at_checkout_then_a_job_runs(e2e: Any, live_api: str, sim: Any) -> None:
    with httpx.Client(base_url=live_api, timeout=30) as api:
        signed_up = api.post(
            "/v1/auth/register",
            json={"email": "buyer@example.com", "password": "correct horse", "plan": "starter"},
        ).json()
        key, purchase = signed_up["api_key"], signed_up["purchase"]
        assert signed_up["account"]["status"] == "pending_payment"

        # The customer pays at the checkout URL; Stripe (the simulator) calls our webhook.
        session_id = purchase["checkout_url"].rsplit("/", 1)[-1]
        paid = httpx.post(
            f"{sim.url}/_sim/stripe/checkout/sessions/{session_id}/events",
            json={"webhook_secret": SECRET, "deliver_to": f"{live_api}/v1/billing/stripe/webhook"},
        ).json()
        forged = httpx.post(
            f"{live_api}/v1/billing/stripe/webhook",
            content=paid["payload"],
            headers={"Stripe-Signature": paid["signature"].replace("v1=", "v1=f")},
        )

        assert paid["delivered_status"] == 200
        assert forged.status_code == 400
        account = api.get("/v1/account", headers=auth(key)).json()
        assert (account["status"], account["credits"]["balance"]) == ("active", 10000)

        job = api.post(
            "/v1/jobs",
            json={"operation": "clustering", "input": {"keywords": ["running shoes"]}},
            headers=auth(key),
        ).json()
    finished = wait_for_job(e2e, key, job["id"])
    assert finished["status"] == "succeeded"
    assert e2e.get("/v1/account", headers=auth(key)).get_json()["credits"]["balance"] == (
        10000 - finished["credits_charged"]
    )
