"""Admin endpoints (X-Admin-Token): credit adjustments, status and plan changes."""

from __future__ import annotations

from typing import Any

from flask import Blueprint
from pydantic import BaseModel, ConfigDict, Field

from api.db import db
from api.security import require_admin
from api.validation import parse_body
from billing import accounts, ledger
from billing.errors import InvalidInput

bp = Blueprint("admin", __name__, url_prefix="/v1/admin")


class AdjustBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    amount: int = Field(ge=-10_000_000, le=10_000_000)
    reason: str = Field(min_length=1, max_length=500)


class AccountPatch(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    status: str | None = None
    plan: str | None = None


@bp.post("/accounts/<account_id>/credits")
@require_admin
def adjust_credits(account_id: str) -> dict[str, Any]:
    body = parse_body(AdjustBody)
    session = db()
    account = accounts.get_account(session, account_id)
    if body.amount == 0:
        raise InvalidInput("amount must not be 0.", fields={"amount": "non-zero integer"})
    ledger.grant(session, account.id, body.amount, "adjustment", body.reason)
    session.refresh(account)
    return accounts.account_view(session, account)


@bp.patch("/accounts/<account_id>")
@require_admin
def update_account(account_id: str) -> dict[str, Any]:
    body = parse_body(AccountPatch)
    session = db()
    account = accounts.admin_update(session, account_id, body.status, body.plan)
    return accounts.account_view(session, account)
