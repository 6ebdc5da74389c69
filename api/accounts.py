"""The caller's own account: status, plan, credits and the four limits; its settings."""

from __future__ import annotations

from typing import Any

from flask import Blueprint
from pydantic import BaseModel, ConfigDict, Field

from api.db import db
from api.security import current_account, require_key, require_role
from api.validation import json_body
from billing import accounts, usage

bp = Blueprint("accounts", __name__, url_prefix="/v1")


@bp.get("/account")
@require_key
def get_account() -> dict[str, Any]:
    return accounts.account_view(db(), current_account())


class AccountSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    timezone: str | None = Field(default=None, max_length=64)


@bp.patch("/account")
@require_key
@require_role("manage_account")
@json_body(AccountSettings)
def update_account(body: AccountSettings) -> dict[str, Any]:
    """The account's settings: `timezone` (IANA name, null for UTC) buckets usage."""
    account = current_account()
    if "timezone" in body.model_fields_set:
        usage.set_timezone(db(), account, body.timezone)
    return accounts.account_view(db(), account)
