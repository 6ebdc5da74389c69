"""Team members and API keys: owners and admins manage them."""

from __future__ import annotations

from typing import Any

from flask import Blueprint
from pydantic import BaseModel, ConfigDict, Field

from api.auth import Email
from api.db import db
from api.security import current_account, current_user, require_key, require_role
from api.validation import json_body
from billing import accounts

bp = Blueprint("team", __name__, url_prefix="/v1")


class InviteBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    email: Email
    role: str = "editor"
    name: str = Field(default="", max_length=200)


class KeyBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(default="api key", min_length=1, max_length=100)


@bp.get("/team")
@require_key
def list_team() -> dict[str, Any]:
    users = accounts.list_users(db(), current_account().id)
    return {"data": [accounts.user_view(u) for u in users]}


@bp.post("/team/invite")
@require_key
@require_role("manage_team")
@json_body(InviteBody)
def invite(body: InviteBody) -> tuple[dict[str, Any], int]:
    user, key = accounts.invite_user(db(), current_account(), body.email, body.role, body.name)
    return {"user": accounts.user_view(user), "api_key": key}, 201


@bp.get("/keys")
@require_key
@require_role("manage_keys")
def list_keys() -> dict[str, Any]:
    keys = accounts.list_api_keys(db(), current_account().id)
    return {"data": [accounts.api_key_view(k) for k in keys]}


@bp.post("/keys")
@require_key
@require_role("manage_keys")
@json_body(KeyBody)
def create_key(body: KeyBody) -> tuple[dict[str, Any], int]:
    api_key, key = accounts.create_api_key(db(), current_account().id, current_user().id, body.name)
    return {**accounts.api_key_view(api_key), "api_key": key}, 201


@bp.delete("/keys/<key_id>")
@require_key
@require_role("manage_keys")
def revoke_key(key_id: str) -> dict[str, Any]:
    return accounts.api_key_view(accounts.revoke_api_key(db(), current_account().id, key_id))
