"""The webhooks API without a worker: secret and rotation, the default endpoint, every
refused URL form at submission (422, nothing charged), delivery logs and redelivery."""

from __future__ import annotations

import base64
import ipaddress
from typing import Any

import pytest
from sqlalchemy import select

from models import WebhookDelivery
from models.db import transaction
from tests.billing.test_webhook_urls import (
    BAD_CHARACTERS,
    BAD_HOSTS,
    MALFORMED,
    NEVER,
    ODD_SPELLINGS,
    PRIVATE,
)
from tests.support import auth, register

CLUSTER = {"operation": "clustering", "input": {"keywords": ["a b", "a c"]}}
# The API resolves names with real DNS; these are refused from their text alone.
REFUSED = MALFORMED + ODD_SPELLINGS + [u for u in PRIVATE + NEVER if "example.com" not in u]
# With the dev allowance on, as `make run` sets it: Flower (5555) and Redis (6379) are the
# stack's own ports there, and metadata stays out of reach.
DEV_REFUSED = [
    "http://127.0.0.1:5555/api/worker/shutdown/worker@localhost",
    "http://localhost:5555/api/task/revoke/x?terminate=true",
    "http://[::1]:6379/",
    "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://[fd00:ec2::254]/latest/meta-data/",
]

pytestmark = pytest.mark.usefixtures("no_enqueue")


def test_the_secret_is_created_once_and_signs_with_32_bytes(client: Any, key: str) -> None:
    first = client.get("/v1/webhooks/secret", headers=auth(key))
    second = client.get("/v1/webhooks/secret", headers=auth(key))

    assert first.status_code == 200
    secret = first.get_json()["secret"]
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    assert second.get_json()["secret"] == secret
    other = register(client, "other@example.com")[0]
    assert client.get("/v1/webhooks/secret", headers=auth(other)).get_json()["secret"] != secret


def test_rotation_returns_a_new_secret_and_keeps_the_old_one_for_a_while(
    client: Any, key: str
) -> None:
    old = client.get("/v1/webhooks/secret", headers=auth(key)).get_json()["secret"]

    rotated = client.post("/v1/webhooks/secret/rotate", headers=auth(key))

    assert rotated.status_code == 200
    body = rotated.get_json()
    assert body["secret"].startswith("whsec_")
    assert body["secret"] != old
    assert body["previous_valid_until"]
    assert (
        client.get("/v1/webhooks/secret", headers=auth(key)).get_json()["secret"]
        == (body["secret"])
    )


def test_the_secret_needs_a_key(client: Any) -> None:
    assert client.get("/v1/webhooks/secret").status_code == 401


def test_the_default_endpoint_is_set_checked_and_cleared(client: Any, key: str) -> None:
    url = "https://8.8.8.8/hooks"

    saved = client.put("/v1/webhooks/endpoint", json={"url": url}, headers=auth(key))
    refused = client.put(
        "/v1/webhooks/endpoint", json={"url": "http://169.254.169.254/"}, headers=auth(key)
    )

    assert saved.status_code == 200
    assert saved.get_json() == {"url": url, "disabled_at": None}
    assert refused.status_code == 422
    assert refused.get_json()["error"]["fields"] == {"webhook_url": "not a public address"}
    assert client.get("/v1/webhooks/endpoint", headers=auth(key)).get_json()["url"] == url
    cleared = client.put("/v1/webhooks/endpoint", json={"url": None}, headers=auth(key))
    assert cleared.get_json()["url"] is None
    assert client.put("/v1/webhooks/endpoint", json={}, headers=auth(key)).status_code == 422


def test_every_refused_url_form_is_422_at_submission(client: Any, key: str) -> None:
    before = client.get("/v1/account", headers=auth(key)).get_json()["credits"]
    answers = {}

    for url in REFUSED:
        response = client.post("/v1/jobs", json={**CLUSTER, "webhook_url": url}, headers=auth(key))
        error = response.get_json()["error"]
        answers[url] = (response.status_code, error["code"], "webhook_url" in error["fields"])

    assert answers == {url: (422, "invalid_request", True) for url in REFUSED}
    assert client.get("/v1/account", headers=auth(key)).get_json()["credits"] == before
    assert client.get("/v1/jobs", headers=auth(key)).get_json()["data"] == []


@pytest.mark.parametrize("url", BAD_CHARACTERS + BAD_HOSTS)
def test_urls_httpx_or_the_resolver_cannot_handle_are_422_on_both_routes(
    client: Any, key: str, url: str
) -> None:
    """A DEL in the path (httpx refuses it at send), an empty or 64-character label (the
    real resolver raises UnicodeError): a clear 422, never a 500 or an unsendable URL."""
    job = client.post("/v1/jobs", json={**CLUSTER, "webhook_url": url}, headers=auth(key))
    endpoint = client.put("/v1/webhooks/endpoint", json={"url": url}, headers=auth(key))

    assert (job.status_code, endpoint.status_code) == (422, 422)
    assert job.get_json()["error"]["fields"] == {"webhook_url": "invalid URL"}


def test_a_refusal_does_not_say_which_internal_address_a_name_resolves_to(
    client: Any, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Echoing the address would let a tenant map our internal DNS, name by name."""
    internal = ipaddress.ip_address("172.18.0.5")
    monkeypatch.setattr("billing.webhook_urls.resolve_host", lambda host, _port: [internal])
    url = "http://postgres.example.com/"

    job = client.post("/v1/jobs", json={**CLUSTER, "webhook_url": url}, headers=auth(key))
    endpoint = client.put("/v1/webhooks/endpoint", json={"url": url}, headers=auth(key))

    for response in (job, endpoint):
        assert response.status_code == 422
        message = response.get_json()["error"]["message"]
        assert "resolves to a non-public address" in message
        assert "172.18" not in message
        assert "private" not in message.replace("non-public", "")


def test_development_mode_accepts_a_localhost_receiver(
    client: Any, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WEBHOOK_ALLOW_PRIVATE_URLS", "1")

    response = client.post(
        "/v1/jobs",
        json={**CLUSTER, "webhook_url": "http://127.0.0.1:9/hooks"},
        headers=auth(key),
    )

    assert response.status_code == 202, response.get_json()
    assert response.get_json()["webhook_url"] == "http://127.0.0.1:9/hooks"


def test_development_mode_still_refuses_the_stacks_ports_and_cloud_metadata(
    client: Any, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WEBHOOK_ALLOW_PRIVATE_URLS", "1")
    monkeypatch.setenv("WEBHOOK_DENY_PORTS", "5000,5555,6379")
    before = client.get("/v1/account", headers=auth(key)).get_json()["credits"]
    answers = {}

    for url in DEV_REFUSED:
        job = client.post("/v1/jobs", json={**CLUSTER, "webhook_url": url}, headers=auth(key))
        endpoint = client.put("/v1/webhooks/endpoint", json={"url": url}, headers=auth(key))
        answers[url] = (job.status_code, endpoint.status_code, job.get_json()["error"]["fields"])

    assert answers == {
        url: (422, 422, {"webhook_url": "not a public address"}) for url in DEV_REFUSED
    }
    assert client.get("/v1/account", headers=auth(key)).get_json()["credits"] == before
    assert client.get("/v1/jobs", headers=auth(key)).get_json()["data"] == []
    assert client.get("/v1/webhooks/endpoint", headers=auth(key)).get_json()["url"] is None


def test_a_cancelled_job_lists_its_delivery_and_can_be_redelivered(client: Any, key: str) -> None:
    job = client.post(
        "/v1/jobs", json={**CLUSTER, "webhook_url": "https://8.8.8.8/hooks"}, headers=auth(key)
    ).get_json()
    assert client.get(f"/v1/jobs/{job['id']}/webhook-deliveries", headers=auth(key)).get_json() == {
        "data": []
    }

    client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth(key))
    listed = client.get(f"/v1/jobs/{job['id']}/webhook-deliveries", headers=auth(key))

    assert listed.status_code == 200
    (delivery,) = listed.get_json()["data"]
    assert delivery["id"].startswith("msg_")
    assert delivery["event_type"] == "job.cancelled"
    assert delivery["url"] == "https://8.8.8.8/hooks"
    assert delivery["status"] == "pending"
    assert delivery["attempt_log"] == []
    redelivered = client.post(
        f"/v1/webhooks/deliveries/{delivery['id']}/redeliver", headers=auth(key)
    )
    assert redelivered.status_code == 202
    assert redelivered.get_json() == {"id": delivery["id"], "status": "pending"}


def test_the_account_endpoint_hears_about_jobs_without_their_own_url(client: Any, key: str) -> None:
    client.put("/v1/webhooks/endpoint", json={"url": "https://8.8.4.4/all"}, headers=auth(key))
    job = client.post("/v1/jobs", json=CLUSTER, headers=auth(key)).get_json()

    client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth(key))

    with transaction() as session:
        (delivery,) = session.scalars(
            select(WebhookDelivery).where(WebhookDelivery.job_id == job["id"])
        ).all()
        assert delivery.url == "https://8.8.4.4/all"
        assert delivery.to_account_endpoint


def test_another_accounts_deliveries_are_404(client: Any, key: str) -> None:
    job = client.post(
        "/v1/jobs", json={**CLUSTER, "webhook_url": "https://8.8.8.8/h"}, headers=auth(key)
    ).get_json()
    client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth(key))
    delivery = client.get(f"/v1/jobs/{job['id']}/webhook-deliveries", headers=auth(key)).get_json()[
        "data"
    ][0]
    intruder = register(client, "intruder@example.com")[0]

    listing = client.get(f"/v1/jobs/{job['id']}/webhook-deliveries", headers=auth(intruder))
    redeliver = client.post(
        f"/v1/webhooks/deliveries/{delivery['id']}/redeliver", headers=auth(intruder)
    )

    assert listing.status_code == redeliver.status_code == 404
    assert (
        client.post("/v1/webhooks/deliveries/msg_nope/redeliver", headers=auth(key)).status_code
        == 404
    )
