"""Webhooks: the signing secret (and its rotation), the account's default endpoint,
a job's delivery log, and redelivery."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask import Blueprint
from pydantic import BaseModel, ConfigDict, Field

from api.db import after_commit, db
from api.schemas import (
    DeliveryOut,
    EndpointOut,
    ListOf,
    RedeliveryOut,
    RotatedSecretOut,
    SecretOut,
    responds,
)
from api.security import current_account, require_key, require_role
from api.validation import WEBHOOK_URL, json_body, webhook_url_policy
from billing import webhooks
from models import Account, utcnow
from models.db import transaction
from settings import get_settings
from workers.dispatch import enqueue_webhooks

bp = Blueprint("webhooks", __name__, url_prefix="/v1")


@bp.get("/webhooks/secret")
@responds(SecretOut)
@require_key
@require_role("manage_settings")
def get_secret() -> dict[str, Any]:
    """The secret that signs this account's webhooks, created on first request.

    A GET reads in a deferred transaction (api/db.py), so the one-time creation is a
    write transaction of its own.
    """
    account = current_account()
    if account.webhook_secret:
        return {"secret": account.webhook_secret}
    with transaction() as session:
        fresh = session.get(Account, account.id)
        assert fresh is not None
        return {"secret": webhooks.get_or_create_secret(session, fresh)}


@bp.post("/webhooks/secret/rotate")
@responds(RotatedSecretOut)
@require_key
@require_role("manage_settings")
def rotate_secret() -> dict[str, Any]:
    """A new secret; deliveries carry signatures by both until the grace period ends (or
    until the next rotation, which keeps only the secret it replaces)."""
    now = utcnow()
    secret = webhooks.rotate_secret(db(), current_account(), now)
    grace = timedelta(seconds=get_settings().webhook_secret_grace_seconds)
    return {"secret": secret, "previous_valid_until": (now + grace).isoformat()}


class EndpointBody(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"examples": [{"url": "https://hooks.example.com/aijobs"}]},
    )

    url: WEBHOOK_URL | None = Field(
        description="http(s), a public address (SSRF policy: README, Webhooks); null clears."
    )


@bp.get("/webhooks/endpoint")
@responds(EndpointOut)
@require_key
def get_endpoint() -> dict[str, Any]:
    """The account's default webhook URL."""
    return webhooks.endpoint_view(current_account())


@bp.put("/webhooks/endpoint")
@responds(EndpointOut)
@require_key
@require_role("manage_settings")
@json_body(EndpointBody)
def set_endpoint(body: EndpointBody) -> dict[str, Any]:
    """The default URL for jobs without their own `webhook_url` and for account events;
    checked by the same SSRF policy as a job's URL. `null` clears it."""
    account = current_account()
    webhooks.set_endpoint(db(), account, body.url, webhook_url_policy())
    return webhooks.endpoint_view(account)


@bp.get("/jobs/<id:job_id>/webhook-deliveries")
@responds(ListOf[DeliveryOut])
@require_key
def job_deliveries(job_id: str) -> dict[str, Any]:
    """Each webhook delivery of a job, with every attempt."""
    rows = webhooks.job_deliveries(db(), current_account().id, job_id)
    return {"data": [webhooks.delivery_view(delivery, attempts) for delivery, attempts in rows]}


@bp.post("/webhooks/deliveries/<delivery_id>/redeliver")
@responds(RedeliveryOut, 202, errors=(409,))
@require_key
@require_role("submit_jobs")
def redeliver(delivery_id: str) -> tuple[dict[str, Any], int]:
    """Send the same event (same `webhook-id`) again, after this request commits."""
    delivery = webhooks.redeliver(db(), current_account().id, delivery_id, utcnow())
    after_commit(lambda: enqueue_webhooks([delivery]))
    return {"id": delivery, "status": "pending"}, 202
